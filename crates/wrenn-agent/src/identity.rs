//! A microVM guest taking the identity the host gives it ([`SerialIdentity`]): a guest restored
//! from saved state or cloned from a warm template wakes up as the machine that was saved, with
//! its hostname, machine id and network address. The host sends the capsule's own on every
//! connect; the guest applies it when it differs from the one it applied last (so a plain
//! resume or a reconnect of the same capsule touches nothing).
//!
//! The interface is re-addressed with the `ip` applet of the busybox the init script leaves
//! at [`BUSYBOX`] (the template's root filesystem may have no `ip`). Before the first connect
//! the applied identity is what the init script set from the kernel command line, so a cold
//! boot runs nothing.

use std::sync::Mutex;

use wrenn_types::agent::SerialIdentity;

use crate::reaper::Reaper;

/// The static busybox on the guest's read-only agent tmpfs.
const BUSYBOX: &str = "/.wrenn/busybox";
/// The guest's network interface.
const IFACE: &str = "eth0";

/// The identity applied last (`None` before the first connect).
static APPLIED: Mutex<Option<SerialIdentity>> = Mutex::new(None);

/// Applies what in `id` differs from the identity applied last. Failures are logged: serving
/// matters more.
pub async fn apply(id: &SerialIdentity, reaper: &Reaper) {
    let last = APPLIED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(booted);
    if &last == id {
        return;
    }
    if last.hostname != id.hostname {
        if let Err(e) = nix::unistd::sethostname(&id.hostname) {
            tracing::warn!(error = %e, "cannot set the hostname");
        }
        replace_file("/etc/hostname", &format!("{}\n", id.hostname));
        replace_file("/etc/hosts", &wrenn_types::agent::etc_hosts(&id.hostname));
    }
    if last.machine_id != id.machine_id {
        replace_file("/etc/machine-id", &format!("{}\n", id.machine_id));
    }
    if last.dns != id.dns && !id.dns.is_empty() {
        let conf: String = id.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        replace_file("/etc/resolv.conf", &conf);
    }
    if let Some(addr) = id.addr.as_deref().filter(|_| {
        // Only a new address or route: re-adding the same one would disturb open connections.
        last.addr != id.addr || last.gateway != id.gateway
    }) {
        let mut steps: Vec<Vec<&str>> = vec![
            vec!["addr", "flush", "dev", IFACE],
            vec!["addr", "add", addr, "dev", IFACE],
            vec!["link", "set", IFACE, "up"],
            vec!["neigh", "flush", "dev", IFACE],
        ];
        if let Some(gw) = &id.gateway {
            steps.push(vec!["route", "replace", "default", "via", gw]);
        }
        for args in steps {
            if let Err(e) = ip(&args, reaper).await {
                tracing::warn!(error = %e, ?args, "cannot re-address the network");
            }
        }
    }
    tracing::info!(hostname = %id.hostname, addr = ?id.addr, "identity applied");
    *APPLIED.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
}

/// Writes `text` to `path` unless it holds it already (a symlink, as `/etc/resolv.conf` often
/// is, is replaced by a file).
fn replace_file(path: &str, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    let _ = std::fs::remove_file(path);
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!(error = %e, path, "cannot write identity file");
    }
}

/// The identity the init script gave this boot: `wrenn.host=`, `wrenn.ip=`, `wrenn.gw=` and
/// `wrenn.dns=` from the kernel command line, and the machine id on disk.
fn booted() -> SerialIdentity {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut id = from_cmdline(&cmdline);
    id.machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap_or_default()
        .trim()
        .to_owned();
    id
}

fn from_cmdline(cmdline: &str) -> SerialIdentity {
    let mut id = SerialIdentity::default();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("wrenn.host=") {
            id.hostname = v.to_owned();
        } else if let Some(v) = word.strip_prefix("wrenn.ip=") {
            id.addr = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("wrenn.gw=") {
            id.gateway = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("wrenn.dns=") {
            id.dns = v.split(',').map(str::to_owned).collect();
        }
    }
    id
}

/// Runs `busybox ip ARGS` through the agent's reaper (which owns `waitpid`).
async fn ip(args: &[&str], reaper: &Reaper) -> std::io::Result<()> {
    let mut cmd = std::process::Command::new(BUSYBOX);
    cmd.arg("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (_child, exit) = reaper.spawn(&mut cmd)?;
    match exit.await {
        Ok(0) => Ok(()),
        Ok(code) => Err(std::io::Error::other(format!("ip exited with {code}"))),
        Err(_) => Err(std::io::Error::other("ip: no exit status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booted_identity_is_read_from_the_kernel_command_line() {
        let id = from_cmdline(
            "console=ttyS0 wrenn.host=cl-a wrenn.ip=10.213.0.6/30 wrenn.gw=10.213.0.5 \
             wrenn.dns=192.0.2.1,192.0.2.2",
        );
        assert_eq!(id.hostname, "cl-a");
        assert_eq!(id.addr.as_deref(), Some("10.213.0.6/30"));
        assert_eq!(id.gateway.as_deref(), Some("10.213.0.5"));
        assert_eq!(id.dns, ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(from_cmdline("console=ttyS0"), SerialIdentity::default());
    }
}
