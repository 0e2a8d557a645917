//! The OCI `config.json` of a capsule.
//!
//! Written as JSON (mirroring `runc spec` plus Docker's hardening) so the file reads like the
//! reference it follows; libcontainer parses it with `oci-spec` (a unit test does the same).
//!
//! What it sets: the capsule's user namespace (by path: made and mapped by the runtime, see
//! [`super::ids`]), new pid, mount, ipc, uts and cgroup namespaces owned by it; hostname =
//! capsule id; the overlay root; /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue (the read-only
//! /sys is mounted by the launcher: capsule root has no CAP_SYS_ADMIN over the host-owned
//! network namespace, so it cannot mount a sysfs); runc's masked and read-only paths; Docker's default
//! capabilities minus CAP_NET_RAW and CAP_MKNOD, plus CAP_SYS_ADMIN (over the capsule's user
//! namespace) for the agent's start only; no `no_new_privs` (as Docker: setuid `sudo` works
//! inside); NOFILE rlimit; a positive OOM
//! score; a devpts instance of at most [`PTY_MAX`] terminals; cpu (quota and cpuset), memory
//! (+swap, same value, so no swap) and pids limits under `/wrenn/<id>`; the agent as PID 1
//! with stdio on /dev/null. No seccomp section: the agent installs the precompiled filter
//! itself (see [`super::seccomp`]), with CAP_SYS_ADMIN instead of `no_new_privs`, then drops
//! CAP_SYS_ADMIN from every set, the bounding set included, before it serves: no capsule
//! process ever holds more than [`CAPABILITIES`].
//!
//! Not here: the network namespace, which the launcher joins before libcontainer runs
//! (libcontainer would join it from inside the new user namespace, where setns(2) on a
//! namespace owned by the host's user namespace fails with EPERM), and the
//! `net.ipv4.ping_group_range` sysctl, which the launcher writes there too; the runtime dir,
//! bound by the runtime itself (see `super::overlay`).
//!
//! No host dir is writable from the capsule: the agent does not bind its socket, it serves on
//! the listening socket the launcher bound on a host-only path and passed as fd
//! [`AGENT_LISTEN_FD`] (see [`super::launcher`]).

use std::path::Path;

use serde_json::{json, Value};

/// In-capsule path of the read-only runtime dir (agent binary, seccomp program).
pub const RUNTIME_MOUNT: &str = "/.wrenn";
pub use super::launcher::AGENT_LISTEN_FD;

/// Docker's default capability set without CAP_NET_RAW (raw sockets must fail) and CAP_MKNOD.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The agent's capabilities at exec: [`CAPABILITIES`] plus CAP_SYS_ADMIN, which loading a
/// seccomp filter without `no_new_privs` takes and which the agent drops before serving.
fn agent_start_capabilities() -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .copied()
        .chain(["CAP_SYS_ADMIN"])
        .collect()
}

/// runc's default masked paths.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Inputs of one capsule's spec.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// Capsule id (hostname, cgroup leaf).
    pub id: &'a str,
    /// Host path of the mounted overlay root.
    pub rootfs: &'a Path,
    /// Bind mount of the capsule's user namespace.
    pub userns: &'a Path,
    /// Whole CPUs.
    pub vcpus: u32,
    /// Memory limit in MiB.
    pub memory_mb: u32,
    /// pids limit.
    pub pids_limit: u32,
    /// RLIMIT_NOFILE for the capsule.
    pub nofile: u64,
    /// Host CPUs the capsule may run on (cpuset list, e.g. `1` or `0-1`), so `nproc` in the
    /// capsule says its vCPUs.
    pub cpus: &'a str,
    /// Memory nodes (cpuset `mems`).
    pub mems: &'a str,
}

/// Pseudo-terminals one capsule may have open at once (its own devpts instance).
pub const PTY_MAX: u32 = 256;

/// OOM score adjustment of every capsule process: under host memory pressure the kernel
/// picks a capsule before anything of the host (the server runs at -1000).
pub const CAPSULE_OOM_SCORE_ADJ: i32 = 500;

/// Builds the `config.json` value.
pub fn build(i: &SpecInput<'_>) -> Value {
    let mem = u64::from(i.memory_mb) * 1024 * 1024;
    let quota = i64::from(i.vcpus.max(1)) * 100_000;
    let caps = agent_start_capabilities();
    json!({
        "ociVersion": "1.0.2",
        "hostname": i.id,
        "root": { "path": i.rootfs, "readonly": false },
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": [
                format!("{RUNTIME_MOUNT}/wrenn-agent"),
                "--listen-fd", AGENT_LISTEN_FD.to_string(),
                "--seccomp", format!("{RUNTIME_MOUNT}/seccomp.bpf"),
            ],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                format!("HOSTNAME={}", i.id),
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": i.nofile, "soft": i.nofile } ],
            "noNewPrivileges": false,
            "oomScoreAdj": CAPSULE_OOM_SCORE_ADJ,
        },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                          format!("max={PTY_MAX}")] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
        ],
        "linux": {
            "namespaces": [
                { "type": "user", "path": i.userns },
                { "type": "pid" },
                { "type": "mount" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "cgroup" },
            ],
            "cgroupsPath": super::cgroups::CapsuleCgroup::oci_path(i.id),
            "resources": {
                "devices": [ { "allow": false, "access": "rwm" } ],
                "memory": { "limit": mem, "swap": mem },
                "cpu": { "quota": quota, "period": 100_000u64, "cpus": i.cpus, "mems": i.mems },
                "pids": { "limit": i64::from(i.pids_limit) },
            },
            "rootfsPropagation": "private",
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_as_oci_and_has_no_seccomp() {
        let v = build(&SpecInput {
            id: "cl-test",
            rootfs: Path::new("/tmp/r"),
            userns: Path::new("/tmp/r/userns"),
            vcpus: 2,
            memory_mb: 256,
            pids_limit: 64,
            nofile: 1024,
            cpus: "1",
            mems: "0",
        });
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v).expect("valid oci spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_none());
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().as_ref())
            .expect("caps");
        assert!(!caps.contains(&oci_spec::runtime::Capability::NetRaw));
        assert!(!caps.contains(&oci_spec::runtime::Capability::Mknod));
        // The agent starts with CAP_SYS_ADMIN (it drops it itself) and without no_new_privs.
        assert!(caps.contains(&oci_spec::runtime::Capability::SysAdmin));
        assert!(!CAPABILITIES.contains(&"CAP_SYS_ADMIN"));
        assert_eq!(
            caps.len(),
            CAPABILITIES.len() + 1,
            "CAPABILITIES + CAP_SYS_ADMIN"
        );
        assert_eq!(
            spec.process().as_ref().and_then(|p| p.no_new_privileges()),
            Some(false)
        );
        assert_eq!(spec.hostname().as_deref(), Some("cl-test"));
        let args = spec.process().as_ref().and_then(|p| p.args().clone());
        assert_eq!(
            args.as_deref().and_then(|a| a.get(1..3)),
            Some(&["--listen-fd".to_owned(), "3".to_owned()][..])
        );
        // No bind mount: nothing on the host is reachable, let alone writable.
        assert!(!spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.typ().as_deref() == Some("bind")));
        // Its own user namespace; the network namespace is joined by the launcher.
        let ns = linux.namespaces().as_ref().expect("namespaces");
        use oci_spec::runtime::LinuxNamespaceType as T;
        assert!(ns.iter().any(|n| n.typ() == T::User && n.path().is_some()));
        assert!(!ns.iter().any(|n| n.typ() == T::Network));
    }
}
