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
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use wrenn_rtnl::{Cidr, Rtnl};

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

/// `r`, its error saying what failed.
fn what<T>(r: io::Result<T>, what: &str) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// `addr` in its slot's /30.
fn slot_addr(addr: Ipv4Addr) -> Cidr {
    Cidr {
        addr,
        prefix: PREFIX,
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
    what(ns.set_up(index_of("lo")?), "set lo up")?;
    if let Some(v) = veth {
        let ns_file = std::fs::File::open(path)?;
        what(
            host.add_veth(&v.host_name, CAPSULE_IF, ns_file.as_fd()),
            "add veth pair",
        )?;
        drop(ns_file);
        // The host end's index, asked of the host's namespace through its socket (the thread
        // has left it).
        let host_index = what(
            host.link_index(&v.host_name),
            &format!("find {}", v.host_name),
        )?;
        what(
            host.add_addr(host_index, slot_addr(v.host)),
            "address host end",
        )?;
        what(host.set_up(host_index), "set host end up")?;
        let eth0 = index_of(CAPSULE_IF)?;
        what(ns.add_addr(eth0, slot_addr(v.capsule)), "address eth0")?;
        what(ns.set_up(eth0), "set eth0 up")?;
        what(ns.replace_default_route(eth0, v.host), "add default route")?;
    }
    then()
}
