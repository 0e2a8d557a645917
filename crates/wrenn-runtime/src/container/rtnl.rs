//! A capsule's network namespace and veth pair made with rtnetlink from one short-lived thread,
//! instead of `ip` processes: what `ip netns add`, `ip link add … type veth peer … netns`,
//! `ip addr add`, `ip link set up` and `ip route add default` do, without a fork and exec each.
//!
//! The thread unshares a network namespace of its own (setns(2) and unshare(2) with
//! `CLONE_NEWNET` move only the calling thread), bind-mounts it at `/run/netns/<name>` and
//! ends when the namespace is set up, so no other work ever runs in the capsule's namespace. A
//! netlink socket opened before the unshare keeps talking to the host's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use netlink_packet_route::link::{LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// Where named network namespaces are bound (as `ip netns` does).
pub const NETNS_DIR: &str = "/run/netns";

/// One veth pair: the host end's name and address, the capsule end (`eth0`)'s address, both
/// in a /30; the capsule's default route goes through the host end.
#[derive(Debug, Clone)]
pub struct Veth {
    /// Host-side interface name.
    pub host_name: String,
    /// Host-side address.
    pub host: Ipv4Addr,
    /// Capsule-side address.
    pub capsule: Ipv4Addr,
}

/// Capsule-side name of the veth pair.
const CAPSULE_IF: &str = "eth0";
/// Prefix length of a slot's network.
const PREFIX: u8 = 30;

/// A netlink route socket in the namespace of the thread that opened it.
struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends `msg` with `flags | NLM_F_REQUEST | NLM_F_ACK` and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> io::Result<()> {
        let mut req = NetlinkMessage::from(msg);
        self.seq += 1;
        req.header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut rx = vec![0u8; 8192];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::other(format!("{what}: bad netlink reply: {e}")))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => {
                                let os = io::Error::from_raw_os_error(-code.get());
                                Err(io::Error::new(os.kind(), format!("{what}: {os}")))
                            }
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    fn set_up(&mut self, index: u32, what: &str) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags |= LinkFlags::Up;
        link.header.change_mask |= LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0, what)
    }

    fn add_addr(&mut self, index: u32, addr: Ipv4Addr, what: &str) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = PREFIX;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
        )
    }
}

/// Index of interface `name` in the calling thread's network namespace.
fn index_of(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("find {name}: {e}")))
}

/// Makes [`NETNS_DIR`] a shared mount point, as `ip netns add` does, so a namespace bound
/// below it stays visible to mount namespaces copied from the host's later.
fn share_netns_dir() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the network namespace `/run/netns/<name>` with `lo` up and, given `veth`, the pair
/// with its addresses, both ends up and the capsule's default route; then `then` runs inside
/// the new namespace (on the same thread, so a process it spawns starts in it). On error
/// nothing made here is left but what removing the namespace removes.
pub fn create_netns(
    name: &str,
    veth: Option<&Veth>,
    then: impl FnOnce() -> anyhow::Result<()> + Send,
) -> anyhow::Result<()> {
    share_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    // Mode 0, as `ip netns add`: nobody opens the file before the namespace is bound on it.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", path.display()))?;
    let made = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("wrenn-netns".into())
            .spawn_scoped(s, || setup_in_thread(&path, veth, then))
            .map_err(anyhow::Error::from)?
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    });
    if made.is_err() {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// The body of [`create_netns`]'s thread; leaves the thread in the new namespace, so the
/// thread must end afterwards.
fn setup_in_thread(
    path: &Path,
    veth: Option<&Veth>,
    then: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut host = Rtnl::open()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow::anyhow!("unshare network namespace: {e}"))?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("bind network namespace at {}: {e}", path.display()))?;
    let mut ns = Rtnl::open()?;
    ns.set_up(index_of("lo")?, "set lo up")?;
    if let Some(v) = veth {
        let ns_file = std::fs::File::open(path)?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(CAPSULE_IF.to_owned()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(ns_file.as_raw_fd()));
        let mut link = LinkMessage::default();
        link.attributes
            .push(LinkAttribute::IfName(v.host_name.clone()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        host.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
            "add veth pair",
        )?;
        drop(ns_file);
        // The host end's index, asked of the host's namespace through its socket.
        let host_index = host_index(&mut host, &v.host_name)?;
        host.add_addr(host_index, v.host, "address host end")?;
        host.set_up(host_index, "set host end up")?;
        let eth0 = index_of(CAPSULE_IF)?;
        ns.add_addr(eth0, v.capsule, "address eth0")?;
        ns.set_up(eth0, "set eth0 up")?;
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(v.host)));
        route.attributes.push(RouteAttribute::Oif(eth0));
        ns.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
            "add default route",
        )?;
    }
    then()
}

/// Index of the host-side link `name`, through a socket of the host's namespace (the calling
/// thread has left it).
fn host_index(host: &mut Rtnl, name: &str) -> io::Result<u32> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
    host.seq += 1;
    req.header.flags = NLM_F_REQUEST;
    req.header.sequence_number = host.seq;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    host.sock.send(&buf, 0)?;
    let mut rx = vec![0u8; 16384];
    loop {
        let n = host.sock.recv(&mut &mut rx[..], 0)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[..n])
            .map_err(|e| io::Error::other(format!("find {name}: bad netlink reply: {e}")))?;
        if reply.header.sequence_number != host.seq {
            continue;
        }
        return match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => Ok(l.header.index),
            NetlinkPayload::Error(e) => Err(io::Error::other(format!(
                "find {name}: {}",
                e.code
                    .map(|c| io::Error::from_raw_os_error(-c.get()).to_string())
                    .unwrap_or_default()
            ))),
            other => Err(io::Error::other(format!(
                "find {name}: unexpected reply {other:?}"
            ))),
        };
    }
}
