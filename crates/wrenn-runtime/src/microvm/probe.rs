//! The KVM probe's answer, remembered until something it depends on changes.
//!
//! A probe boots a guest, and on a host where KVM hangs guests it waits out its whole bound
//! (seconds) on every server start. Its answer depends only on the host boot, the QEMU binary,
//! the guest kernel and `/dev/kvm`, so it is kept in `cache_dir/microvm/kvm-probe.json` with
//! those as its key, and a start with the same key reuses it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// File under the cache dir holding the last answer.
const FILE: &str = "microvm/kvm-probe.json";

/// What a KVM probe depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProbeKey {
    /// `/proc/sys/kernel/random/boot_id`: a reboot may change the hypervisor under us.
    boot_id: String,
    /// Path, size and mtime of the QEMU binary.
    qemu: String,
    /// Size and mtime of the guest kernel.
    kernel: String,
    /// Device number and mtime of `/dev/kvm` (`-` when absent).
    kvm: String,
}

/// A remembered answer: the boot time, or why KVM did not boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Memo {
    key: ProbeKey,
    result: Result<u64, String>,
}

fn identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} {} {}.{} {}",
            path.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.rdev()
        ),
        Err(_) => "-".to_owned(),
    }
}

impl ProbeKey {
    /// The key on this host now.
    pub(super) fn current(kernel: &Path) -> Self {
        Self {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            qemu: identity(&super::qemu::binary()),
            kernel: identity(kernel),
            kvm: identity(Path::new("/dev/kvm")),
        }
    }
}

/// The remembered answer under `cache_dir` for `key`, if there is one.
pub(super) fn recall(cache_dir: &Path, key: &ProbeKey) -> Option<Result<Duration, String>> {
    let text = std::fs::read(cache_dir.join(FILE)).ok()?;
    let memo: Memo = serde_json::from_slice(&text).ok()?;
    (memo.key == *key && !key.boot_id.is_empty()).then(|| memo.result.map(Duration::from_millis))
}

/// Remembers `result` for `key` (best effort: a failure only costs the next start a probe).
pub(super) fn remember(cache_dir: &Path, key: &ProbeKey, result: &Result<Duration, String>) {
    let memo = Memo {
        key: key.clone(),
        result: result
            .clone()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let path = cache_dir.join(FILE);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(&memo)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = written {
        tracing::debug!(%error, path = %path.display(), "could not remember the KVM probe");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh cache dir with its `microvm` subdirectory.
    fn cache(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wrenn-probe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("microvm")).expect("mkdir");
        dir
    }

    fn key(boot: &str) -> ProbeKey {
        ProbeKey {
            boot_id: boot.into(),
            qemu: "q 1 2.3 0".into(),
            kernel: "k 4 5.6 0".into(),
            kvm: "/dev/kvm 0 7.8 2760".into(),
        }
    }

    #[test]
    fn an_answer_is_reused_only_for_the_same_key() {
        let dir = cache("reuse");
        let k = key("boot-a");
        assert_eq!(recall(&dir, &k), None);
        let hung = Err("the kvm probe guest did not boot within 5s".to_owned());
        remember(&dir, &k, &hung);
        assert_eq!(recall(&dir, &k), Some(hung));
        // After a reboot (or a new QEMU, kernel or /dev/kvm) the host is probed again.
        assert_eq!(recall(&dir, &key("boot-b")), None);
        let mut other_qemu = k.clone();
        other_qemu.qemu = "q 9 2.3 0".into();
        assert_eq!(recall(&dir, &other_qemu), None);
        let booted = Ok(Duration::from_millis(812));
        remember(&dir, &k, &booted);
        assert_eq!(recall(&dir, &k), Some(booted));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_boot_id_means_no_reuse() {
        let dir = cache("no-boot-id");
        let k = key("");
        remember(&dir, &k, &Ok(Duration::from_millis(1)));
        assert_eq!(recall(&dir, &k), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
