//! A microVM guest taking the identity the host gives it ([`SerialIdentity`]): a guest restored
//! from saved state or cloned from a warm template wakes up as the machine that was saved, with
//! its hostname, machine id and network address. The host sends the capsule's own on every
//! connect; the guest applies it when it differs from the one it applied last (so a plain
//! resume or a reconnect of the same capsule touches nothing).
//!
//! The interface is re-addressed over rtnetlink (see `rtnl`). Before the first connect the
//! applied identity is what the init script set from the kernel command line, so a cold boot
//! changes nothing.

use std::sync::Mutex;

use wrenn_types::agent::SerialIdentity;

use wrenn_rtnl::{Cidr, Rtnl};

/// The guest's network interface.
const IFACE: &str = "eth0";

/// The identity applied last (`None` before the first connect).
static APPLIED: Mutex<Option<SerialIdentity>> = Mutex::new(None);

/// Applies what in `id` differs from the identity applied last. Failures are logged: serving
/// matters more.
pub fn apply(id: &SerialIdentity) {
    let last = APPLIED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(booted);
    if &last == id {
        return;
    }
    let t0 = std::time::Instant::now();
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
    let files_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(addr) = id.addr.as_deref().filter(|_| {
        // Only a new address or route: re-adding the same one would disturb open connections.
        last.addr != id.addr || last.gateway != id.gateway
    }) {
        if let Err(e) = readdress(&last, addr, id.gateway.as_deref()) {
            tracing::warn!(error = %e, addr, "cannot re-address the network");
        }
    }
    tracing::info!(
        hostname = %id.hostname,
        addr = ?id.addr,
        files_ms,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "identity applied"
    );
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

/// Moves [`IFACE`] from the address and gateway of `last` to `addr` and `gateway`. The
/// neighbour entries of both gateways go: a slot used again has the same gateway address
/// behind a new link-layer address.
fn readdress(last: &SerialIdentity, addr: &str, gateway: Option<&str>) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let new = Cidr::parse(addr).ok_or_else(|| bad(addr))?;
    let index = nix::net::if_::if_nametoindex(IFACE)?;
    let mut nl = Rtnl::open()?;
    if let Some(old) = last.addr.as_deref().and_then(Cidr::parse) {
        if old != new {
            ignore_missing(nl.del_addr(index, old))?;
        }
    }
    nl.add_addr(index, new)?;
    nl.set_up(index)?;
    for gw in [last.gateway.as_deref(), gateway].into_iter().flatten() {
        if let Ok(ip) = gw.parse() {
            ignore_missing(nl.del_neigh(index, ip))?;
        }
    }
    if let Some(gw) = gateway {
        nl.replace_default_route(index, gw.parse().map_err(|_| bad(gw))?)?;
    }
    Ok(())
}

/// `r`, with "there was nothing to remove" as success.
fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EADDRNOTAVAIL)) => Ok(()),
        r => r,
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
