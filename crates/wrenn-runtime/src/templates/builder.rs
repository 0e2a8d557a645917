//! Building a recipe into a tree (blocking; called from the store on a blocking thread).
//!
//! Steps: the base (busybox from the host, a cached debootstrap tree, or a copy of the parent
//! template's tree) → apt packages → pip venv → files → `run` commands → fixups every template
//! needs. Build steps that run programs of the tree (apt, pip, `run`) run in a chroot inside a private mount
//! namespace (`unshare --mount`), as debootstrap itself does: the recipe is ours, the packages
//! come from Debian and PyPI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::recipe::{package_list, Base, Recipe};
use crate::tree::{copy_tree, private_dir, PRIVATE_DIR_MODE};

/// Debian mirror used when the machine names none.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Builds the tree of `recipe` at `rootfs` (which must not exist). `parent_rootfs` is the built
/// tree of its base template, when its base is one; `key` is the recipe's identity
/// ([`super::recipe::Recipes::key`]): a recipe that installs packages on top of a template is
/// built once into `cache/<name>/rootfs` under that key and copied from there afterwards.
pub(super) fn build_tree(
    recipe: &Recipe,
    rootfs: &Path,
    cache: &Path,
    parent_rootfs: Option<&Path>,
    key: &str,
) -> anyhow::Result<()> {
    let steps = Steps::new(recipe);
    match &recipe.spec.base {
        Base::Busybox => {
            steps.step("busybox", "busybox from the host");
            build_busybox(rootfs)?;
        }
        Base::Debootstrap {
            suite,
            packages_file,
        } => {
            let packages = recipe
                .file(packages_file)
                .context("packages_file missing")?;
            steps.step("debootstrap", "Debian base (cached after the first build)");
            let cached = ensure_debootstrap_cache(cache, &recipe.name, suite, packages)?;
            steps.step("copy", "copy the cached base");
            copy_tree(&cached, rootfs)?;
        }
        Base::Template(parent) => {
            let from =
                parent_rootfs.with_context(|| format!("base template {parent} not built"))?;
            if recipe.installs_packages() {
                let cached = ensure_recipe_cache(cache, recipe, key, from, &steps)?;
                steps.step("copy", "copy the cached tree");
                copy_tree(&cached, rootfs)?;
                steps.step("fixups", "users, /tmp, mount points");
                return common_fixups(rootfs);
            }
            steps.step("copy", &format!("copy the tree of {parent}"));
            copy_tree(from, rootfs)?;
        }
    }
    install_packages(recipe, rootfs, &steps)?;
    steps.step(
        "files",
        &format!("{} recipe files", recipe.spec.files.len()),
    );
    add_files(recipe, rootfs)?;
    run_commands(recipe, rootfs, &steps)?;
    steps.step("fixups", "users, /tmp, mount points");
    common_fixups(rootfs)
}

/// The recipe's `run` commands, in order, each with `/bin/sh -c` in the tree.
fn run_commands(recipe: &Recipe, rootfs: &Path, steps: &Steps<'_>) -> anyhow::Result<()> {
    for cmd in &recipe.spec.run {
        steps.step("run", cmd);
        in_chroot(rootfs, cmd, &[]).with_context(|| format!("run {cmd:?}"))?;
    }
    Ok(())
}

/// Progress of one build: one log line per step (the server's log and `wrenn template build`
/// show the same lines).
struct Steps<'a> {
    name: &'a str,
    started: std::time::Instant,
}

impl<'a> Steps<'a> {
    fn new(recipe: &'a Recipe) -> Self {
        Self {
            name: &recipe.name,
            started: std::time::Instant::now(),
        }
    }

    fn step(&self, step: &str, what: &str) {
        tracing::info!(
            template = self.name,
            step,
            at_s = self.started.elapsed().as_secs(),
            "building template: {what}"
        );
    }
}

/// The apt and pip steps of a recipe.
fn install_packages(recipe: &Recipe, rootfs: &Path, steps: &Steps<'_>) -> anyhow::Result<()> {
    if !recipe.spec.apt.is_empty() {
        let pkgs = recipe.spec.apt.join(" ");
        steps.step("apt", &format!("apt-get install {pkgs}"));
        in_chroot(
            rootfs,
            &format!(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                 --no-install-recommends {pkgs} && apt-get clean && rm -rf /var/lib/apt/lists/*"
            ),
            &[],
        )
        .context("install apt packages")?;
    }
    if let Some(pip) = &recipe.spec.pip {
        let venv = &pip.venv;
        let pkgs = pip.packages.join(" ");
        steps.step("venv", &format!("python3 -m venv {venv}"));
        in_chroot(rootfs, &format!("python3 -m venv {venv}"), &[]).context("create the venv")?;
        steps.step(
            "pip",
            &format!("pip install {} packages (minutes)", pip.packages.len()),
        );
        // The host's CA bundle (a TLS-intercepting egress needs its CA), only for the build.
        let ca = HostCa::install(rootfs)?;
        let env: Vec<(&str, &str)> = ca.as_ref().map_or(vec![], |c| vec![("PIP_CERT", c.path())]);
        let r = in_chroot(
            rootfs,
            &format!(
                "{venv}/bin/pip install --no-cache-dir --disable-pip-version-check \
                 --progress-bar off {pkgs}"
            ),
            &env,
        );
        drop(ca);
        r.context("install pip packages")?;
        // Byte code compiled at build time, not by the first capsule that imports.
        steps.step("compileall", "compile the venv's byte code");
        in_chroot(
            rootfs,
            &format!("{venv}/bin/python -m compileall -q -j 0 {venv} >/dev/null || true"),
            &[],
        )
        .context("compile byte code")?;
    }
    Ok(())
}

/// The host's CA bundle copied into a tree for the length of a build step.
struct HostCa {
    host_path: PathBuf,
}

impl HostCa {
    /// Where the bundle is inside the tree.
    const IN_TREE: &'static str = "/tmp/.wrenn-build-ca.crt";
    /// The host's bundle (Debian's path).
    const HOST: &'static str = "/etc/ssl/certs/ca-certificates.crt";

    fn install(rootfs: &Path) -> anyhow::Result<Option<Self>> {
        if !Path::new(Self::HOST).is_file() {
            return Ok(None);
        }
        let host_path = rootfs.join(Self::IN_TREE.trim_start_matches('/'));
        std::fs::create_dir_all(rootfs.join("tmp")).context("mkdir /tmp")?;
        std::fs::copy(Self::HOST, &host_path).context("copy the host's CA bundle")?;
        Ok(Some(Self { host_path }))
    }

    fn path(&self) -> &'static str {
        Self::IN_TREE
    }
}

impl Drop for HostCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.host_path);
    }
}

/// Returns the cached tree of `recipe` (a template base plus packages and files) under `key`,
/// building it from `parent` first when missing or stale. An flock on `cache/<name>.lock`
/// serialises builds across processes.
fn ensure_recipe_cache(
    cache: &Path,
    recipe: &Recipe,
    key: &str,
    parent: &Path,
    steps: &Steps<'_>,
) -> anyhow::Result<PathBuf> {
    let name = recipe.name.as_str();
    let dir = cache.join(name);
    private_dir(cache, PRIVATE_DIR_MODE).context("create cache dir")?;
    let lock_file =
        std::fs::File::create(cache.join(format!("{name}.lock"))).context("open cache lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock cache")?;
    let rootfs = dir.join("rootfs");
    if std::fs::read_to_string(dir.join("recipe")).ok().as_deref() == Some(key) && rootfs.is_dir() {
        steps.step("cache", &format!("cached tree {}", rootfs.display()));
        return Ok(rootfs);
    }
    let tmp = cache.join(format!(".{name}.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let target = tmp.join("rootfs");
    let built = (|| {
        steps.step("copy", "copy the base template's tree");
        copy_tree(parent, &target)?;
        install_packages(recipe, &target, steps)?;
        steps.step(
            "files",
            &format!("{} recipe files", recipe.spec.files.len()),
        );
        add_files(recipe, &target)?;
        run_commands(recipe, &target, steps)?;
        std::fs::write(tmp.join("recipe"), key)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).context("rename cache into place")
    })();
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built.map(|()| rootfs)
}

/// Forgets the cached tree of recipe `name` (`wrenn template build --force`).
pub(super) fn drop_cache(cache: &Path, name: &str) -> anyhow::Result<()> {
    let dir = cache.join(name);
    if dir.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

/// Writes the recipe's files into the tree (parents created, never through a symlink of the
/// tree: the tree is ours, but a parent's symlink would still put the file elsewhere).
fn add_files(recipe: &Recipe, rootfs: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for f in &recipe.spec.files {
        let rel = f.path.trim_start_matches('/');
        let dst = rootfs.join(rel);
        let mut p = rootfs.to_path_buf();
        for c in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            p.push(c);
            if p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                bail!("file {}: parent {} is a symlink", f.path, p.display());
            }
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("mkdir for {}", f.path))?;
        }
        if dst.symlink_metadata().is_ok() {
            std::fs::remove_file(&dst).with_context(|| format!("replace {}", f.path))?;
        }
        let bytes = recipe.file(&f.source).context("file source missing")?;
        std::fs::write(&dst, bytes).with_context(|| format!("write {}", f.path))?;
        std::fs::set_permissions(
            &dst,
            std::fs::Permissions::from_mode(f.mode.unwrap_or(0o644)),
        )
        .with_context(|| format!("chmod {}", f.path))?;
    }
    Ok(())
}

/// Runs `script` with `/bin/sh` chrooted into `rootfs`, with `/proc`, `/dev` and the host's
/// resolver in a mount namespace of its own (gone with the process, so nothing stays mounted
/// even when the script fails), in a clean environment plus `env`.
fn in_chroot(rootfs: &Path, script: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let resolv = rootfs.join("etc/resolv.conf");
    let had_resolv = resolv.symlink_metadata().is_ok();
    if !had_resolv {
        let _ = std::fs::copy("/etc/resolv.conf", &resolv);
    }
    let mounts = "mount -t proc proc \"$1/proc\" && mount --rbind /dev \"$1/dev\" && \
                  exec chroot \"$1\" /bin/sh -c \"$2\"";
    let status = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "/bin/sh",
            "-c",
        ])
        .arg(mounts)
        .arg("wrenn-build")
        .arg(rootfs)
        .arg(script)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .status()
        .context("spawn unshare")?;
    if !had_resolv {
        let _ = std::fs::remove_file(&resolv);
    }
    if !status.success() {
        bail!("{script:?} failed in the template tree: {status}");
    }
    Ok(())
}

/// `/bin/busybox` plus one symlink per applet.
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

/// The identity of a debootstrap base: a change to the suite or the packages file rebuilds
/// the cache. (The hash of the suite then the file's bytes, as since the first release, so
/// that existing caches stay valid.)
pub(super) fn debootstrap_key(suite: &str, packages_file: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(suite);
    h.update(packages_file);
    format!("{:x}", h.finalize())
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

/// Returns the cached debootstrap tree of recipe `name`
/// (`cache/<name>/rootfs`, keyed by `cache/<name>/recipe`), building it first when missing or
/// stale. An flock on `cache/<name>.lock` serialises builds across processes.
fn ensure_debootstrap_cache(
    cache: &Path,
    name: &str,
    suite: &str,
    packages_file: &[u8],
) -> anyhow::Result<PathBuf> {
    let dir = cache.join(name);
    private_dir(cache, PRIVATE_DIR_MODE).context("create cache dir")?;
    let lock_file =
        std::fs::File::create(cache.join(format!("{name}.lock"))).context("open cache lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock cache")?;
    let key = debootstrap_key(suite, packages_file);
    let rootfs = dir.join("rootfs");
    if std::fs::read_to_string(dir.join("recipe")).ok().as_deref() == Some(key.as_str())
        && rootfs.is_dir()
    {
        return Ok(rootfs);
    }
    let tmp = cache.join(format!(".{name}.build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let target = tmp.join("rootfs");
    let mirror = debian_mirror();
    let text = String::from_utf8_lossy(packages_file);
    let packages = package_list(&text);
    tracing::info!(template = name, %mirror, "building debootstrap base (first use; cached after)");
    eprintln!("wrenn: building template `{name}` with debootstrap from {mirror} (cached after)");
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(suite)
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
    std::fs::write(tmp.join("recipe"), &key)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).context("rename cache into place")?;
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::recipe::Recipes;

    /// The cache key of `minimal` is the one its cache was first built with.
    #[test]
    fn minimal_cache_key_is_stable() {
        let r = Recipes::embedded().expect("recipes");
        let m = r.get("minimal").expect("minimal");
        let Base::Debootstrap {
            suite,
            packages_file,
        } = &m.spec.base
        else {
            panic!("base");
        };
        let bytes = m.file(packages_file).expect("packages");
        let old = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update("bookworm");
            h.update(include_str!("../../../../images/minimal/packages.txt"));
            format!("{:x}", h.finalize())
        };
        assert_eq!(debootstrap_key(suite, bytes), old);
    }

    #[test]
    fn files_are_written_with_their_mode_and_never_through_a_symlink() {
        use std::collections::BTreeMap;
        use std::os::unix::fs::PermissionsExt;
        let s = crate::test_utils::Scratch::new("files");
        let mut files = BTreeMap::new();
        files.insert(
            "recipe.toml".to_owned(),
            b"base = \"busybox\"\n[[files]]\npath = \"/usr/local/bin/hello\"\nsource = \"hello\"\nmode = 0o755\n".to_vec(),
        );
        files.insert("hello".to_owned(), b"#!/bin/sh\necho hi\n".to_vec());
        let r = Recipe::parse("t", files).expect("recipe");
        let root = s.path().join("rootfs");
        std::fs::create_dir_all(&root).expect("mkdir");
        add_files(&r, &root).expect("add");
        let m = std::fs::metadata(root.join("usr/local/bin/hello")).expect("written");
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // A symlinked parent is refused rather than followed.
        let root2 = s.path().join("rootfs2");
        std::fs::create_dir_all(root2.join("usr/local")).expect("mkdir");
        std::os::unix::fs::symlink(s.path().join("elsewhere"), root2.join("usr/local/bin"))
            .expect("symlink");
        let e = add_files(&r, &root2).expect_err("symlink parent");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(!s.path().join("elsewhere").exists());
    }
}
