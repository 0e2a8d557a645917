//! Templates on disk: the built-in bases `busybox` and `minimal`, built on first use.
//!
//! ```text
//! data_dir/templates/<name>/rootfs/        the tree (overlay lower dir; never written)
//! data_dir/templates/<name>/template.json  TemplateInfo
//! cache_dir/templates/minimal/rootfs/      the debootstrap result, kept across data dirs
//! cache_dir/templates/minimal/recipe       hash of the recipe that built it
//! ```
//!
//! Recipes live in the repository's `images/` and are compiled in. Builds go to a temporary
//! sibling dir and are renamed into place, so a crash never leaves a half tree under the final
//! name. Concurrent builds of one name are serialised by a per-name async mutex (in process) and
//! an flock on the cache (across processes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{RuntimeError, TemplateInfo};

/// Built-in base templates.
pub const BUILTIN: &[&str] = &["busybox", "minimal"];

const MINIMAL_PACKAGES: &str = include_str!("../../../images/minimal/packages.txt");
const BUSYBOX_PASSWD: &str = include_str!("../../../images/busybox/etc/passwd");
const BUSYBOX_GROUP: &str = include_str!("../../../images/busybox/etc/group");
const BUSYBOX_HOSTS: &str = include_str!("../../../images/busybox/etc/hosts");
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const SUITE: &str = "bookworm";

/// On-disk form of [`TemplateInfo`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    base: bool,
    size_bytes: u64,
    created_at: DateTime<Utc>,
}

impl From<TemplateFile> for TemplateInfo {
    fn from(t: TemplateFile) -> Self {
        TemplateInfo {
            name: t.name,
            base: t.base,
            size_bytes: t.size_bytes,
            created_at: Some(t.created_at),
        }
    }
}

/// The template store of one runtime.
#[derive(Debug)]
pub struct Templates {
    dir: PathBuf,
    cache: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Templates {
    /// Store under `data_dir/templates`, cache under `cache_dir/templates`.
    pub fn new(data_dir: &Path, cache_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("templates"),
            cache: cache_dir.join("templates"),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Rootfs of template `name`.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("rootfs")
    }

    fn info_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("template.json")
    }

    fn read_info(&self, name: &str) -> Option<TemplateInfo> {
        let bytes = std::fs::read(self.info_path(name)).ok()?;
        serde_json::from_slice::<TemplateFile>(&bytes)
            .ok()
            .map(Into::into)
    }

    /// Built-ins (built or not) and every other template on disk.
    pub fn list(&self) -> Vec<TemplateInfo> {
        let mut out: Vec<TemplateInfo> = BUILTIN
            .iter()
            .map(|n| {
                self.read_info(n).unwrap_or(TemplateInfo {
                    name: (*n).to_owned(),
                    base: true,
                    size_bytes: 0,
                    created_at: None,
                })
            })
            .collect();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.filter_map(Result::ok) {
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                if BUILTIN.contains(&name.as_str()) {
                    continue;
                }
                if let Some(i) = self.read_info(&name) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Makes sure `name` is on disk, building a built-in on first use (once, however many
    /// callers ask at the same time).
    pub async fn ensure(&self, name: &str) -> Result<TemplateInfo, RuntimeError> {
        if let Some(i) = self.read_info(name) {
            return Ok(i);
        }
        if !BUILTIN.contains(&name) {
            return Err(RuntimeError::TemplateNotFound(name.to_owned()));
        }
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(name.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(i) = self.read_info(name) {
            return Ok(i);
        }
        let (dir, cache, n) = (self.dir.clone(), self.cache.clone(), name.to_owned());
        let built = tokio::task::spawn_blocking(move || build(&dir, &cache, &n))
            .await
            .map_err(|e| anyhow::anyhow!("build task: {e}"))
            .and_then(|r| r);
        built.map_err(|source| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        })
    }
}

/// Whether `name` can name a snapshot template on disk (a safe name, up to 128 characters, so
/// that a server may qualify it with its owner).
pub fn valid_snapshot_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !BUILTIN.contains(&name)
}

impl Templates {
    /// Makes snapshot template `name` from the tree at `src` (copied; `src` may change after).
    pub async fn create_snapshot(
        &self,
        name: &str,
        src: &Path,
    ) -> Result<TemplateInfo, RuntimeError> {
        let err = |source: anyhow::Error| RuntimeError::TemplateBuild {
            name: name.to_owned(),
            source,
        };
        if !valid_snapshot_name(name) {
            return Err(err(anyhow::anyhow!("invalid snapshot name")));
        }
        if self.dir.join(name).exists() {
            return Err(RuntimeError::InvalidState {
                id: name.to_owned(),
                state: "already exists".into(),
            });
        }
        let (dir, src, n) = (self.dir.clone(), src.to_owned(), name.to_owned());
        match tokio::task::spawn_blocking(move || snapshot_tree(&dir, &src, &n))
            .await
            .map_err(|e| err(anyhow::anyhow!("snapshot task: {e}")))?
        {
            Ok(info) => Ok(info),
            Err(SnapshotError::Exists) => Err(RuntimeError::InvalidState {
                id: name.to_owned(),
                state: "already exists".into(),
            }),
            Err(SnapshotError::Other(e)) => Err(err(e)),
        }
    }

    /// Removes snapshot template `name`.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), RuntimeError> {
        if BUILTIN.contains(&name) {
            return Err(RuntimeError::InvalidState {
                id: name.to_owned(),
                state: "a protected base template".into(),
            });
        }
        if !valid_snapshot_name(name) || self.read_info(name).is_none() {
            return Err(RuntimeError::TemplateNotFound(name.to_owned()));
        }
        let target = self.dir.join(name);
        // Rename first so the name is free at once and a crash never leaves half a tree. The
        // trash name is unique, and never replaces anything, so only our own trash is removed.
        let trash = self.dir.join(unique_tmp_name(name, "deleted"));
        tokio::task::spawn_blocking(move || {
            crate::container::sys::rename_noreplace(&target, &trash)?;
            std::fs::remove_dir_all(&trash)
        })
        .await
        .map_err(|e| anyhow::anyhow!("delete task: {e}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .map_err(|source| RuntimeError::Host {
            id: name.to_owned(),
            step: "delete template",
            source,
        })
    }
}

/// `.{name}.{what}-{pid}-{seq}`: unique among all temp dirs of this process (a counter) and
/// of other processes (the pid), so concurrent snapshots and deletes of one name never share
/// (and never wipe) each other's temp dir.
fn unique_tmp_name(name: &str, what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{what}-{}-{seq}", std::process::id())
}

/// Why [`snapshot_tree`] failed.
#[derive(Debug)]
enum SnapshotError {
    /// Another snapshot took the name first.
    Exists,
    /// Anything else, with the step.
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SnapshotError {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

/// Copies `src` into a fresh `dir/.name.snap-<pid>-<seq>/rootfs`, writes its `template.json`,
/// and renames it to `dir/name` without replacing anything (blocking). The temp dir is removed
/// on failure; nothing this call did not create is ever removed.
fn snapshot_tree(dir: &Path, src: &Path, name: &str) -> Result<TemplateInfo, SnapshotError> {
    crate::container::overlay::private_dir(dir, crate::container::overlay::PRIVATE_DIR_MODE)
        .context("create template dir")?;
    let tmp = dir.join(unique_tmp_name(name, "snap"));
    // `create_dir`, not `create_dir_all`: fails if the name somehow exists, so `tmp` is ours.
    std::fs::create_dir(&tmp).context("create snapshot temp dir")?;
    let result = (|| {
        copy_tree(src, &tmp.join("rootfs"))?;
        let info = TemplateFile {
            name: name.to_owned(),
            base: false,
            size_bytes: crate::container::overlay::dir_size(&tmp.join("rootfs")),
            created_at: Utc::now(),
        };
        std::fs::write(tmp.join("template.json"), serde_json::to_vec_pretty(&info)?)
            .context("write template.json")?;
        match crate::container::sys::rename_noreplace(&tmp, &dir.join(name)) {
            Ok(()) => Ok(info.into()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SnapshotError::Exists),
            Err(e) => Err(SnapshotError::Other(
                anyhow::Error::from(e).context("rename snapshot into place"),
            )),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Builds template `name` into `dir/name` (blocking).
fn build(dir: &Path, cache: &Path, name: &str) -> anyhow::Result<TemplateInfo> {
    let final_dir = dir.join(name);
    let tmp = dir.join(format!(".{name}.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).context("create build dir")?;
    let rootfs = tmp.join("rootfs");
    let started = std::time::Instant::now();
    match name {
        "busybox" => build_busybox(&rootfs)?,
        "minimal" => {
            let cached = ensure_minimal_cache(cache)?;
            copy_tree(&cached, &rootfs)?;
        }
        other => bail!("no recipe for {other}"),
    }
    common_fixups(&rootfs)?;
    let file = TemplateFile {
        name: name.to_owned(),
        base: true,
        size_bytes: crate::container::overlay::dir_size(&rootfs),
        created_at: Utc::now(),
    };
    std::fs::write(tmp.join("template.json"), serde_json::to_vec_pretty(&file)?)
        .context("write template.json")?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).context("rename template into place")?;
    tracing::info!(
        template = name,
        ms = started.elapsed().as_millis() as u64,
        "template ready"
    );
    Ok(file.into())
}

/// `/bin/busybox` plus one symlink per applet, and the files of `images/busybox/etc`.
fn build_busybox(rootfs: &Path) -> anyhow::Result<()> {
    let host_bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox not found on the host (install busybox-static)")?;
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("mkdir {d}"))?;
    }
    std::fs::copy(host_bb, rootfs.join("bin/busybox")).context("copy busybox")?;
    let list = Command::new(host_bb)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link)
                .with_context(|| format!("symlink {applet}"))?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), BUSYBOX_PASSWD)?;
    std::fs::write(rootfs.join("etc/group"), BUSYBOX_GROUP)?;
    std::fs::write(rootfs.join("etc/hosts"), BUSYBOX_HOSTS)?;
    Ok(())
}

/// What every template gets: users, /tmp 1777, /root, /run and our mount points.
fn common_fixups(rootfs: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in ["tmp", "root", "run", ".wrenn", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("mkdir {d}"))?;
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(rootfs.join("root"), std::fs::Permissions::from_mode(0o700))?;
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    for (user, line) in [
        ("root", "root:x:0:0:root:/root:/bin/sh"),
        (
            "nobody",
            "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
        ),
    ] {
        if !passwd.lines().any(|l| l.starts_with(&format!("{user}:"))) {
            bail!("template /etc/passwd lacks {user} (want e.g. `{line}`)");
        }
    }
    Ok(())
}

/// The recipe's identity: a change to the package list rebuilds the cache.
fn minimal_recipe() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(SUITE);
    h.update(MINIMAL_PACKAGES);
    format!("{:x}", h.finalize())
}

fn packages() -> Vec<&'static str> {
    MINIMAL_PACKAGES
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The machine's Debian mirror (deb822 `URIs:` in /etc/apt/sources.list.d), else the default.
pub fn debian_mirror() -> String {
    let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") else {
        return DEFAULT_MIRROR.to_owned();
    };
    let mut files: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let Ok(s) = std::fs::read_to_string(&f) else {
            continue;
        };
        for l in s.lines() {
            if let Some(uris) = l.strip_prefix("URIs:") {
                for u in uris.split_whitespace() {
                    if u.trim_end_matches('/').ends_with("/debian") {
                        return u.trim_end_matches('/').to_owned();
                    }
                }
            }
        }
    }
    DEFAULT_MIRROR.to_owned()
}

/// Returns the cached debootstrap tree, building it first when missing or stale.
fn ensure_minimal_cache(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("minimal");
    crate::container::overlay::private_dir(cache, crate::container::overlay::PRIVATE_DIR_MODE)
        .context("create cache dir")?;
    let lock_file = std::fs::File::create(cache.join("minimal.lock")).context("open cache lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock cache")?;
    let recipe = minimal_recipe();
    let rootfs = dir.join("rootfs");
    if std::fs::read_to_string(dir.join("recipe")).ok().as_deref() == Some(recipe.as_str())
        && rootfs.is_dir()
    {
        return Ok(rootfs);
    }
    let tmp = cache.join(format!(".minimal.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let target = tmp.join("rootfs");
    let mirror = debian_mirror();
    tracing::info!(%mirror, "building template minimal with debootstrap (first use; cached after)");
    eprintln!("wrenn: building template `minimal` with debootstrap from {mirror} (cached after)");
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages().join(",")))
        .arg(SUITE)
        .arg(&target)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("spawn debootstrap")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("debootstrap failed: {status}");
    }
    // Downloaded .debs are not part of the template.
    if let Ok(rd) = std::fs::read_dir(target.join("var/cache/apt/archives")) {
        for e in rd.filter_map(Result::ok) {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    std::fs::write(tmp.join("recipe"), &recipe)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).context("rename cache into place")?;
    Ok(rootfs)
}

/// `cp -a` (reflinks where the filesystem has them).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_lists_required_packages() {
        let p = packages();
        for want in [
            "bash",
            "python3",
            "git",
            "curl",
            "ca-certificates",
            "procps",
        ] {
            assert!(p.contains(&want), "{want}");
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "wrenn-tpl-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn temp_names_are_unique_in_one_process() {
        let a = unique_tmp_name("s", "snap");
        let b = unique_tmp_name("s", "snap");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!(".s.snap-{}-", std::process::id())));
    }

    /// Concurrent snapshots of one name: exactly one wins, the others get `Exists`, the winner's
    /// tree is whole and no temp dir is left behind.
    #[test]
    fn concurrent_snapshots_of_one_name() {
        let root = scratch("snap");
        let (src, dir) = (root.join("src"), root.join("templates"));
        std::fs::create_dir_all(src.join("sub")).expect("src");
        for i in 0..200 {
            std::fs::write(src.join("sub").join(i.to_string()), vec![b'x'; 512]).expect("file");
        }
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6)
                .map(|_| s.spawn(|| snapshot_tree(&dir, &src, "snap")))
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        for r in &results {
            assert!(matches!(r, Ok(_) | Err(SnapshotError::Exists)), "{r:?}");
        }
        let copied = std::fs::read_dir(dir.join("snap/rootfs/sub"))
            .expect("winner's tree")
            .count();
        assert_eq!(copied, 200);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snap")]);
        // An existing (even empty) dir under the name is never replaced.
        std::fs::create_dir(dir.join("empty")).expect("mkdir");
        assert!(matches!(
            snapshot_tree(&dir, &src, "empty"),
            Err(SnapshotError::Exists)
        ));
        assert_eq!(
            std::fs::read_dir(dir.join("empty")).expect("dir").count(),
            0
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[tokio::test]
    async fn create_snapshot_race_is_invalid_state_and_delete_uses_own_trash() {
        let root = scratch("api");
        let src = root.join("src");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(src.join("f"), "x").expect("file");
        let t = Templates::new(&root.join("data"), &root.join("cache"));
        t.create_snapshot("snap", &src).await.expect("first");
        // The name check up front catches the plain case...
        assert!(matches!(
            t.create_snapshot("snap", &src).await,
            Err(RuntimeError::InvalidState { .. })
        ));
        // ...and the no-replace rename the racy one.
        std::fs::create_dir(root.join("data/templates/late")).expect("mkdir");
        assert!(matches!(
            snapshot_tree(&root.join("data/templates"), &src, "late"),
            Err(SnapshotError::Exists)
        ));
        t.delete_snapshot("snap").await.expect("delete");
        let left: Vec<_> = std::fs::read_dir(root.join("data/templates"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("late")]);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn busybox_users() {
        assert!(BUSYBOX_PASSWD.contains("root:x:0:0"));
        assert!(BUSYBOX_PASSWD.contains("nobody:"));
        assert!(BUSYBOX_GROUP.contains("root:x:0:"));
    }
}
