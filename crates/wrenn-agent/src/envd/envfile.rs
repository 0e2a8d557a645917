//! The sandbox's default environment as a root-only file inside the capsule, for in-capsule
//! services that cannot reach envd (the code interpreter's port-49999 service applies it to
//! its kernels before each execution, see `images/code-interpreter-v1/files/server.py`).
//!
//! Written on every `PUT /envd-config` by the capsule's agent (PID 1 of the capsule) only:
//! an agent run on a host never writes host paths.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directory of [`ENV_FILE`]: mode 0700, capsule root's.
pub const ENV_DIR: &str = "/run/wrenn-envd";
/// The sandbox's default environment, one JSON object of strings; mode 0600, capsule root's.
pub const ENV_FILE: &str = "/run/wrenn-envd/env.json";

/// Writes `envs` to [`ENV_FILE`] when this agent is a capsule's init; replaced atomically, so a
/// reader sees the old or the new object, never a part.
pub fn publish(envs: &BTreeMap<String, String>) -> std::io::Result<()> {
    if !crate::sys::is_pid1() {
        return Ok(());
    }
    write(Path::new(ENV_DIR), envs)
}

/// Writes `envs` as `env.json` in `dir` (created 0700 if missing; a non-directory there,
/// a symlink included, is an error).
fn write(dir: &Path, envs: &BTreeMap<String, String>) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(dir)?
        }
        Err(e) => return Err(e),
    }
    let body = serde_json::to_vec(envs).map_err(std::io::Error::other)?;
    let tmp = dir.join(".env.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("env.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_json_object_and_replaces_it() {
        let base = tempfile::tempdir().expect("dir");
        let dir = base.path().join("envd");
        let mut envs = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        write(&dir, &envs).expect("first");
        envs.insert("B".to_owned(), "two words".to_owned());
        write(&dir, &envs).expect("second");
        let file = dir.join("env.json");
        let got: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
        assert_eq!(got, envs);
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert!(!dir.join(".env.json.tmp").exists());
    }

    #[test]
    fn refuses_a_symlink_in_place_of_the_dir() {
        let base = tempfile::tempdir().expect("dir");
        let target = base.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        let dir = base.path().join("envd");
        std::os::unix::fs::symlink(&target, &dir).expect("symlink");
        assert!(write(&dir, &BTreeMap::new()).is_err());
        assert!(!target.join("env.json").exists());
    }
}
