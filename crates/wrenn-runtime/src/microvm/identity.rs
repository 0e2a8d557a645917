//! What makes a guest this capsule: the [`SerialIdentity`] its relay tells the agent on every
//! connect, so a guest restored from a snapshot or cloned from a warm template takes the
//! capsule's hostname, machine id and network address instead of the saved machine's.

use sha2::{Digest, Sha256};
use wrenn_types::agent::{SerialIdentity, AGENT_SOCKET_NAME};

use super::qemu::{files, NetArgs};
use super::{net, relay, MicroVmRuntime, VmRecord};

/// The identity of capsule `id` with network `net`. The machine id is derived from the id,
/// so it stays the same across pauses and server restarts.
pub fn identity(id: &str, net: Option<&NetArgs>) -> SerialIdentity {
    let digest = Sha256::digest(format!("wrenn machine-id {id}").as_bytes());
    let machine_id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    SerialIdentity {
        hostname: id.to_owned(),
        machine_id,
        addr: net.map(|n| n.addr.clone()),
        gateway: net.map(|n| n.gateway.clone()),
        dns: net.map(|n| n.dns.clone()).unwrap_or_default(),
    }
}

impl MicroVmRuntime {
    /// The guest's network arguments of `record` (its slot's addresses), if it has egress.
    pub(super) fn net_args_of(&self, record: &VmRecord) -> Option<NetArgs> {
        let host_net = self.inner.host_net.get().cloned().unwrap_or_default();
        match (
            record.net.slot,
            record.net.capsule_ip(),
            record.net.host_ip(),
        ) {
            (Some(slot), Some(a), Some(g)) => Some(net::net_args(slot, a, g, &host_net)),
            _ => None,
        }
    }

    /// Starts the agent relay of `record`'s VM, which tells the guest the capsule's identity.
    pub(super) fn start_relay(&self, record: &VmRecord) -> std::io::Result<relay::Relay> {
        let dir = self.capsule_dir(&record.id);
        let net = self.net_args_of(record);
        relay::Relay::start(
            &dir.join(files::SERIAL),
            &dir.join(AGENT_SOCKET_NAME),
            Some(identity(&record.id, net.as_ref())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_capsules_and_stable() {
        let n = NetArgs {
            tap: "tap0".into(),
            mac: "52:54:00:00:00:01".into(),
            addr: "10.213.0.6/30".into(),
            gateway: "10.213.0.5".into(),
            dns: vec!["192.0.2.53".into()],
        };
        let a = identity("cl-a", Some(&n));
        assert_eq!(a, identity("cl-a", Some(&n)));
        assert_eq!(a.hostname, "cl-a");
        assert_eq!(a.machine_id.len(), 32);
        assert_eq!(a.addr.as_deref(), Some("10.213.0.6/30"));
        assert_ne!(a.machine_id, identity("cl-b", None).machine_id);
        assert_eq!(identity("cl-b", None).addr, None);
    }
}
