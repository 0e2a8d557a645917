//! rtnetlink requests without an `ip` process each: what `ip addr add|del`, `ip link set up`,
//! `ip neigh del`, `ip route replace default` and `ip link show NAME` do, on a socket of the
//! network namespace of the thread that opened it.
//!
//! Shared by the container runtime (a capsule's network namespace and veth pair) and the guest
//! agent (re-addressing a restored microVM's interface, where each `ip` process cost ~20 ms
//! under software emulation).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// An IPv4 address with its prefix length, parsed from `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (`/32` when the prefix is missing).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        Some(Self {
            addr: addr.parse().ok()?,
            prefix,
        })
    }
}

/// A netlink route socket and the sequence number of its last request.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace; it keeps talking to that
    /// namespace after the thread leaves it.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` under the next sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let mut req = NetlinkMessage::from(msg);
        self.seq += 1;
        req.header.flags = flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(())
    }

    /// Index of the link named `name` in the socket's namespace.
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.send(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)?;
        let mut rx = vec![0u8; 16384];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[..n])
                .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => Ok(l.header.index),
                NetlinkPayload::Error(e) => Err(e.code.map_or_else(
                    || io::Error::other("no link"),
                    |c| io::Error::from_raw_os_error(-c.get()),
                )),
                other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
            };
        }
    }

    /// Sends `msg` as a request with `flags` (plus `NLM_F_REQUEST | NLM_F_ACK`) and waits for
    /// its acknowledgement; a refusal is the kernel's errno.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(msg, flags | NLM_F_REQUEST | NLM_F_ACK)?;
        let mut rx = vec![0u8; 8192];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                }
                match reply.header.length as usize {
                    0 => break,
                    len => off += len,
                }
            }
        }
    }

    fn address(index: u32, a: Cidr) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = a.prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(a.addr.into()));
        msg.attributes
            .push(AddressAttribute::Address(a.addr.into()));
        msg
    }

    /// Removes address `a` from interface `index`.
    pub fn del_addr(&mut self, index: u32, a: Cidr) -> io::Result<()> {
        self.request(RouteNetlinkMessage::DelAddress(Self::address(index, a)), 0)
    }

    /// Adds address `a` to interface `index` (no error when it is there).
    pub fn add_addr(&mut self, index: u32, a: Cidr) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewAddress(Self::address(index, a)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds a veth pair: `name` in the socket's namespace, its peer `peer` in the network
    /// namespace `peer_netns` (both down, unaddressed). Fails when `name` exists.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sets interface `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags |= LinkFlags::Up;
        link.header.change_mask |= LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Forgets the link-layer address of neighbour `ip` on interface `index`.
    pub fn del_neigh(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.request(RouteNetlinkMessage::DelNeighbour(msg), 0)
    }

    /// Makes `gateway` (through interface `index`) the default route.
    pub fn replace_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        route.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// In a network namespace of its own (as root): a veth pair is made, and one end is moved
    /// from one address and gateway to another, as a restored guest's interface is.
    #[test]
    fn an_interface_moves_to_a_new_address_and_gateway() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP an_interface_moves_to_a_new_address_and_gateway: needs root");
            return;
        }
        // unshare(CLONE_NEWNET) moves only this thread; `ip` processes it starts inherit it.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let mut nl = Rtnl::open().expect("rtnl");
            let here = std::fs::File::open("/proc/thread-self/ns/net").expect("netns");
            nl.add_veth("v0", "v1", here.as_fd()).expect("add veth");
            let again = nl
                .add_veth("v0", "v2", here.as_fd())
                .expect_err("v0 exists");
            assert_eq!(again.raw_os_error(), Some(libc::EEXIST), "{again}");
            assert!(ip(&["link", "show", "v1"]).contains("v1@v0"));
            ip(&["link", "set", "v1", "up"]);
            let index = nix::net::if_::if_nametoindex("v0").expect("v0");
            let old = Cidr::parse("10.213.0.6/30").expect("cidr");
            let new = Cidr::parse("10.213.0.10/30").expect("cidr");
            assert_eq!(nl.link_index("v0").expect("index of v0"), index);
            let missing = nl.link_index("nosuch0").expect_err("no such link");
            assert_eq!(missing.raw_os_error(), Some(libc::ENODEV), "{missing}");
            nl.add_addr(index, old).expect("add old");
            nl.set_up(index).expect("up");
            nl.replace_default_route(index, Ipv4Addr::new(10, 213, 0, 5))
                .expect("old route");
            ip(&[
                "neigh",
                "replace",
                "10.213.0.5",
                "lladdr",
                "02:00:00:00:00:05",
                "dev",
                "v0",
            ]);
            nl.del_addr(index, old).expect("del old");
            nl.add_addr(index, new).expect("add new");
            nl.add_addr(index, new).expect("add new again");
            for gw in [Ipv4Addr::new(10, 213, 0, 5), Ipv4Addr::new(10, 213, 0, 9)] {
                match nl.del_neigh(index, gw) {
                    Ok(()) => {}
                    Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
                }
            }
            nl.replace_default_route(index, Ipv4Addr::new(10, 213, 0, 9))
                .expect("new route");
            let addrs = ip(&["-4", "-o", "addr", "show", "dev", "v0"]);
            assert!(addrs.contains("10.213.0.10/30"), "{addrs}");
            assert!(!addrs.contains("10.213.0.6"), "{addrs}");
            assert!(ip(&["link", "show", "v0"]).contains("UP"));
            let routes = ip(&["-4", "route", "show", "default"]);
            assert!(routes.contains("via 10.213.0.9 dev v0"), "{routes}");
            assert!(!ip(&["neigh", "show", "dev", "v0"]).contains("10.213.0.5 "));
        })
        .join()
        .expect("namespace thread");
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            Cidr::parse("10.213.4.10/30"),
            Some(Cidr {
                addr: Ipv4Addr::new(10, 213, 4, 10),
                prefix: 30
            })
        );
        assert_eq!(Cidr::parse("10.0.0.1").map(|c| c.prefix), Some(32));
        assert_eq!(Cidr::parse("10.0.0.1/33"), None);
        assert_eq!(Cidr::parse("x/3"), None);
    }
}
