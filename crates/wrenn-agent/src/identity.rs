//! A microVM guest taking the identity the host gives it ([`SerialIdentity`]): a guest restored
//! from saved state or cloned from a warm template wakes up as the machine that was saved, with
//! its hostname, machine id and network address. The host sends the capsule's own on every
//! connect; the guest applies it when it differs from the one it applied last (so a plain
//! resume or a reconnect of the same capsule touches nothing).
//!
//! The interface is re-addressed with the `ip` applet of the busybox the init script leaves
//! at [`BUSYBOX`] (the template's root filesystem may have no `ip`).

use std::sync::Mutex;

use wrenn_types::agent::SerialIdentity;

/// The static busybox on the guest's read-only agent tmpfs.
const BUSYBOX: &str = "/.wrenn/busybox";
/// The guest's network interface.
const IFACE: &str = "eth0";

/// The identity applied last (`None` before the first connect).
static APPLIED: Mutex<Option<SerialIdentity>> = Mutex::new(None);

/// Applies what in `id` differs from the identity applied last. Failures are logged: serving
/// matters more.
pub async fn apply(id: &SerialIdentity) {
    let last = APPLIED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    if &last == id {
        return;
    }
    if last.hostname != id.hostname {
        if let Err(e) = nix::unistd::sethostname(&id.hostname) {
            tracing::warn!(error = %e, "cannot set the hostname");
        }
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
            if let Err(e) = ip(&args).await {
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

async fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = tokio::process::Command::new(BUSYBOX)
        .arg("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}
