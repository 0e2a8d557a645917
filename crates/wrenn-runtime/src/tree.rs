//! Host-side file trees: private dirs, tree sizes, copies and temp names. Shared by the
//! template store and the container backend; nothing here knows about capsules.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};

use crate::sys;

/// Mode of the runtime's own dirs under `data_dir` and `cache_dir`: only host root enters.
/// (Nothing needs traversal by another user: libcontainer resolves the rootfs, bundle and the
/// `runtime/` bind-mount source as root, the agent in the capsule runs as root, and the server
/// connects to `agent.sock` as root.)
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and missing parents, then sets `dir`'s mode to `mode` (also when it already
/// existed with a wider one).
pub(crate) fn private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// At most this many entries are looked at by one [`dir_size`] walk.
pub(crate) const DIR_SIZE_MAX_ENTRIES: u64 = 1_000_000;
/// [`dir_size`] does not descend deeper than this (each level holds one open directory).
pub(crate) const DIR_SIZE_MAX_DEPTH: usize = 128;

/// Apparent size of a tree (regular files and symlinks by `st_size`; directories count only
/// their contents), never following a symlink.
///
/// The tree may be written by a capsule while we walk it (an upper dir), so nothing is looked
/// up by path twice: every directory is opened relative to its parent's fd with
/// `O_DIRECTORY | O_NOFOLLOW` and every entry is `fstatat`ed with `AT_SYMLINK_NOFOLLOW`. A dir
/// swapped for a symlink (to `/`, say) between readdir and open fails to open and counts 0;
/// a symlink counts as the link itself. The walk is capped at [`DIR_SIZE_MAX_ENTRIES`] entries
/// and [`DIR_SIZE_MAX_DEPTH`] levels: past those it stops and returns what it counted.
pub(crate) fn dir_size(p: &Path) -> u64 {
    let dir = match sys::open_dir_nofollow(None, p) {
        Ok(d) => d,
        // Not a directory (or a symlink): the entry itself.
        Err(_) => return std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0),
    };
    let mut walk = SizeWalk {
        bytes: 0,
        entries: 0,
    };
    walk.dir(dir, 0);
    walk.bytes
}

struct SizeWalk {
    bytes: u64,
    entries: u64,
}

impl SizeWalk {
    /// Adds the contents of `dir`; `false` once the entry cap is hit (stop everywhere).
    fn dir(&mut self, mut dir: nix::dir::Dir, depth: usize) -> bool {
        use std::os::fd::AsRawFd;
        let fd = dir.as_raw_fd();
        for entry in dir.iter() {
            let Ok(entry) = entry else {
                continue;
            };
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            if self.entries >= DIR_SIZE_MAX_ENTRIES {
                return false;
            }
            self.entries += 1;
            let Ok(st) = sys::lstat_at(fd, name) else {
                continue;
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                self.bytes = self
                    .bytes
                    .saturating_add(u64::try_from(st.st_size).unwrap_or(0));
                continue;
            }
            if depth + 1 >= DIR_SIZE_MAX_DEPTH {
                continue;
            }
            // Re-checked by the open itself: a symlink swapped in since the stat fails here.
            let Ok(child) = sys::open_dir_nofollow(Some(fd), name) else {
                continue;
            };
            if !self.dir(child, depth + 1) {
                return false;
            }
        }
        true
    }
}

/// `cp -a` (reflinks where the filesystem has them) of `from` to `to` (blocking).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()
        .context("spawn cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed: {status}", from.display(), to.display());
    }
    Ok(())
}

/// Id a shifted file gets when its id lies outside the range being shifted (`nobody`).
pub(crate) const OVERFLOW_ID: u32 = 65_534;

/// Moves the ids of every entry of the private tree `root` (a fresh copy only this process
/// writes, so paths are safe) from the host range `base..base+size` down to `0..size`; ids
/// outside the range become [`OVERFLOW_ID`]. Symlinks are changed as links, never followed.
///
/// chown(2) clears the setuid and setgid bits and the `security.capability` xattr of a
/// non-directory; they are put back only on a file that stays owned by neither uid 0 nor
/// gid 0. So a tree made from a capsule (whose root is `base` on the host) holds no
/// setuid/setgid or file-capability file owned by host root: copied out of a capsule it would
/// otherwise be a root-owned privileged binary on the host's filesystem.
pub(crate) fn shift_ids(root: &Path, base: u32, size: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shift = |id: u32| {
        id.checked_sub(base)
            .filter(|d| *d < size)
            .unwrap_or(OVERFLOW_ID)
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue; // another link to an inode already shifted
        }
        let (uid, gid) = (shift(md.uid()), shift(md.gid()));
        sys::lchown(&p, uid, gid).with_context(|| format!("chown {}", p.display()))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("read {}", p.display()))? {
                stack.push(e?.path());
            }
            continue;
        }
        if md.file_type().is_symlink() {
            continue;
        }
        let mut mode = md.mode() & 0o7777;
        if uid == 0 || gid == 0 {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
            sys::remove_file_caps(&p).with_context(|| format!("drop caps {}", p.display()))?;
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", p.display()))?;
    }
    Ok(())
}

/// `.{name}.{what}-{pid}-{seq}`: unique among all temp dirs of this process (a counter) and
/// of other processes (the pid), so concurrent builds, snapshots and deletes of one name never
/// share (and never wipe) each other's temp dir.
pub(crate) fn unique_tmp_name(name: &str, what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{what}-{}-{seq}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_utils::Scratch;

    #[test]
    fn symlinks_are_counted_as_links_never_followed() {
        let s = Scratch::new("size-links");
        let d = s.path().to_owned();
        std::fs::create_dir_all(d.join("a/b")).expect("mkdir");
        std::fs::write(d.join("a/f"), vec![0u8; 1000]).expect("file");
        std::fs::write(d.join("a/b/g"), vec![0u8; 24]).expect("file");
        // A symlink to / where a dir might be: its size is the target's length (1), not /.
        std::os::unix::fs::symlink("/", d.join("a/root")).expect("symlink");
        std::os::unix::fs::symlink("/usr", d.join("usr")).expect("symlink");
        assert_eq!(dir_size(&d), 1000 + 24 + 1 + 4);
        // The walked root itself being a symlink is not followed either.
        assert_eq!(dir_size(&d.join("a/root")), 1);
        assert_eq!(dir_size(&d.join("a/f")), 1000);
        assert_eq!(dir_size(&d.join("missing")), 0);
    }

    /// A child that is a symlink by the time it is opened is refused by the open itself.
    #[test]
    fn open_refuses_a_swapped_in_symlink() {
        use std::os::fd::AsRawFd;
        let s = Scratch::new("size-swap");
        let d = s.path().to_owned();
        std::os::unix::fs::symlink("/", d.join("x")).expect("symlink");
        let parent = sys::open_dir_nofollow(None, &d).expect("open");
        let err = sys::open_dir_nofollow(Some(parent.as_raw_fd()), "x").expect_err("symlink");
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{err}"
        );
    }

    #[test]
    fn ids_shift_down_and_root_owned_files_lose_setuid() {
        use std::os::unix::fs::MetadataExt;
        let s = Scratch::new("shift");
        let d = s.path().join("t");
        std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        let base = 3 << 20;
        let file = |name: &str, uid: u32, mode: u32| {
            let p = d.join(name);
            std::fs::write(&p, "x").expect("write");
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).expect("chown");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        file("sub/suid-root", base, 0o4755);
        file("suid-user", base + 1000, 0o6755);
        file("stranger", 42, 0o644);
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).expect("symlink");
        std::os::unix::fs::lchown(d.join("link"), Some(base + 5), Some(base + 5)).expect("lchown");
        std::fs::hard_link(d.join("suid-user"), d.join("hard")).expect("link");
        std::os::unix::fs::lchown(&d, Some(base), Some(base)).expect("chown dir");
        shift_ids(&d, base, 65_536).expect("shift");
        let md = |n: &str| std::fs::symlink_metadata(d.join(n)).expect("stat");
        assert_eq!((md("").uid(), md("").gid()), (0, 0));
        assert_eq!(
            (
                md("sub/suid-root").uid(),
                md("sub/suid-root").mode() & 0o7777
            ),
            (0, 0o755)
        );
        assert_eq!(
            (md("suid-user").uid(), md("suid-user").mode() & 0o7777),
            (1000, 0o6755)
        );
        assert_eq!(md("hard").uid(), 1000);
        assert_eq!(md("stranger").uid(), OVERFLOW_ID);
        assert_eq!(md("link").uid(), 5);
        // The link's target was not touched.
        assert_eq!(std::fs::metadata("/etc/passwd").expect("passwd").uid(), 0);
    }

    #[test]
    fn depth_is_capped() {
        let s = Scratch::new("size-deep");
        let d = s.path().to_owned();
        let mut p = d.clone();
        for _ in 0..DIR_SIZE_MAX_DEPTH + 5 {
            p = p.join("d");
        }
        std::fs::create_dir_all(&p).expect("deep");
        std::fs::write(p.join("f"), vec![0u8; 7]).expect("file");
        std::fs::write(d.join("top"), vec![0u8; 3]).expect("file");
        assert_eq!(dir_size(&d), 3);
    }
}
