//! A VM's network: the container backend's namespace, veth pair and firewall (see
//! `container::net`), plus a tap for QEMU bridged to the namespace's `eth0`, so the guest owns
//! the capsule address and the host's `inet wrenn` table (NAT, blocked ranges, nothing in but
//! replies) applies to it unchanged. QEMU runs inside the namespace to open the tap.
//!
//! # Limitations
//! The namespace's own `inet capsule` table filters its own output and input hooks, which
//! bridged frames do not pass; for a VM it guards nothing (the guest cannot reach the
//! namespace's configuration anyway), the host table does the fencing.

use std::net::Ipv4Addr;

use crate::container::net::{self as cnet, CapsuleNet, HostNet};

use super::qemu::NetArgs;

/// The tap's name inside the namespace.
const TAP: &str = "tap0";

/// Creates the namespace (and with a slot: veth, firewall, bridge and tap); the guest's
/// network arguments when it has egress.
pub async fn create(net: &CapsuleNet, host: &HostNet) -> anyhow::Result<Option<NetArgs>> {
    cnet::create(net, host).await?;
    let (Some(slot), Some(addr), Some(gw)) = (net.slot, net.capsule_ip(), net.host_ip()) else {
        return Ok(None);
    };
    let batch = format!(
        "link add br0 type bridge\n\
         tuntap add dev {TAP} mode tap\n\
         addr flush dev eth0\n\
         link set eth0 master br0\n\
         link set {TAP} master br0\n\
         link set br0 up\n\
         link set {TAP} up\n"
    );
    cnet::run_stdin("ip", &["-n", &net.netns, "-b", "-"], &batch).await?;
    Ok(Some(net_args(slot, addr, gw, host)))
}

/// Removes what [`create`] made (the tap and bridge go with the namespace).
pub async fn destroy(net: &CapsuleNet) -> anyhow::Result<()> {
    cnet::destroy(net).await
}

/// The guest's side: a MAC derived from the slot, the slot's capsule address, the host's
/// resolvers.
pub fn net_args(slot: u32, addr: Ipv4Addr, gateway: Ipv4Addr, host: &HostNet) -> NetArgs {
    NetArgs {
        tap: TAP.into(),
        mac: format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            (slot >> 16) & 0xff,
            (slot >> 8) & 0xff,
            slot & 0xff
        ),
        addr: format!("{addr}/30"),
        gateway: gateway.to_string(),
        dns: host.dns.iter().map(Ipv4Addr::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_addresses_follow_the_slot() {
        let n = net_args(
            0x0102,
            Ipv4Addr::new(10, 213, 4, 10),
            Ipv4Addr::new(10, 213, 4, 9),
            &HostNet {
                dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
                addrs: vec![],
            },
        );
        assert_eq!(n.dns, ["192.0.2.53"]);
        assert_eq!(n.mac, "52:54:00:00:01:02");
        assert_eq!(n.addr, "10.213.4.10/30");
        assert_eq!(n.gateway, "10.213.4.9");
    }
}
