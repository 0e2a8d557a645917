//! Capsule networking: a network namespace per capsule, a veth pair to the host, NAT egress.
//!
//! Per capsule (egress): `/run/netns/<id>` with `lo` up (libcontainer leaves it down), a veth
//! pair `wrv<N>` (host) / `eth0` (capsule), the /30 number `N` of `10.213.0.0/16`
//! (host `.1`, capsule `.2`), a default route via the host end. Isolated capsules get the
//! namespace with `lo` only.
//!
//! Once per host: the nft table `inet wrenn` (masquerade for 10.213.0.0/16 leaving through a
//! non-capsule interface; capsules may not reach RFC1918, link-local, CGNAT, loopback,
//! "this network", IETF-protocol, benchmarking, multicast and reserved ranges, nor each other;
//! nothing is forwarded *into* a capsule veth except replies, so other machines that route
//! 10.213.0.0/16 to this host cannot reach capsule ports (the port proxy connects from the host
//! itself, through OUTPUT, not FORWARD); the host accepts from capsules only replies and ICMP
//! echo, and rejects the rest so that clients fail fast) and `net.ipv4.ip_forward=1`.
//!
//! Slot allocation is host-global, so several runtimes (tests run them in parallel) never clash:
//! slot `N` is claimed by creating `/run/wrenn-net/<N>` exclusively; the file names the owning
//! data dir and capsule, so `recover` can find and free its own.
//!
//! The namespace, veth pair, addresses and route are made over rtnetlink (see `super::rtnl`);
//! the capsule's firewall is one `nft -f -` run inside the namespace. Destroy still runs `ip`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;

use super::claims::Claims;
use super::rtnl;

/// Where slot claims live.
const CLAIM_DIR: &str = "/run/wrenn-net";
/// Number of /30 slots in 10.213.0.0/16.
const SLOTS: u32 = 16384;
/// Prefix of host-side veth names.
pub const VETH_PREFIX: &str = "wrv";

/// The nft ruleset, applied once per runtime start (idempotent: the table is re-created).
const NFT_RULES: &str = r#"
table inet wrenn
delete table inet wrenn
table inet wrenn {
    chain forward {
        type filter hook forward priority 0; policy accept;
        iifname "wrv*" oifname "wrv*" drop
        oifname "wrv*" ct state established,related accept
        oifname "wrv*" drop
        @DNS@
        iifname "wrv*" ip daddr { @BLOCKED@ } drop
        iifname "wrv*" meta nfproto ipv6 drop
        iifname "wrv*" meta nfproto ipv4 accept
        iifname "wrv*" drop comment "wrenn:forward"
    }
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "wrv*" ct state established,related accept
        iifname "wrv*" icmp type echo-request accept
        iifname "wrv*" meta l4proto tcp reject with tcp reset
        iifname "wrv*" reject comment "wrenn:input"
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        ip saddr 10.213.0.0/16 oifname != "wrv*" masquerade comment "wrenn:nat"
    }
}
"#;

/// Destinations no capsule may reach: private, link-local (cloud metadata), CGNAT, loopback,
/// "this network", IETF protocol assignments, benchmarking, multicast and reserved ranges.
const BLOCKED_RANGES: &str = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, \
    100.64.0.0/10, 127.0.0.0/8, 0.0.0.0/8, 192.0.0.0/24, 198.18.0.0/15, 224.0.0.0/4, 240.0.0.0/4";

/// Markers every host chain ends with; a listing without all of them means someone flushed or
/// replaced our rules (a firewall reload), and [`ensure_host`] puts them back.
const HOST_MARKERS: [&str; 3] = ["wrenn:forward", "wrenn:input", "wrenn:nat"];

/// The firewall inside one capsule's network namespace, where capsule root (no
/// `CAP_NET_ADMIN` over that namespace) cannot change it and a host firewall reload cannot
/// reach it. It holds on its own what the host table also enforces: nothing new comes in but
/// from the host's end of the veth (the port proxy), nothing goes out to a blocked range, the
/// host's own addresses or over IPv6; the host's DNS servers on port 53 excepted.
///
/// Loaded once, into a namespace made just before (see [`create_timed`]), so the table cannot
/// exist yet: no `delete table` first, which would make the kernel wait for an RCU grace
/// period (about 7 ms of every create on the development host).
const CAPSULE_RULES: &str = r#"
table inet capsule {
    chain output {
        type filter hook output priority 0; policy drop;
        oifname "lo" accept
        ct state established,related accept
        @DNS@
        ip daddr { @BLOCKED@ } meta l4proto tcp counter reject with tcp reset comment "blocked"
        ip daddr { @BLOCKED@ } counter reject with icmpx admin-prohibited
        @HOST_ADDRS@
        oifname "eth0" meta nfproto ipv4 accept
    }
    chain input {
        type filter hook input priority 0; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "eth0" ip saddr @GATEWAY@ meta nfproto ipv4 accept
    }
}
"#;

/// Network of one capsule, as recorded in `capsule.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CapsuleNet {
    /// Namespace name (the capsule id).
    pub netns: String,
    /// Slot number for egress capsules.
    pub slot: Option<u32>,
}

impl CapsuleNet {
    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Capsule-side address.
    pub fn capsule_ip(&self) -> Option<Ipv4Addr> {
        self.slot.map(|s| slot_addr(s, 2))
    }

    /// Host-side address.
    pub fn host_ip(&self) -> Option<Ipv4Addr> {
        self.slot.map(|s| slot_addr(s, 1))
    }
}

/// Whether a TCP connect to `127.0.0.1:port` inside the network namespace at `netns`
/// succeeds within `timeout` (a service's port probe).
///
/// The connect runs on a thread of its own that enters the namespace: setns(2) with
/// `CLONE_NEWNET` moves only the calling thread, and this thread ends right after the connect,
/// so no other work ever runs in the capsule's namespace (never a pool thread, which would
/// carry the namespace into unrelated tasks).
pub(crate) async fn port_open(netns: PathBuf, port: u16, timeout: std::time::Duration) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("wrenn-port-probe".into())
        .spawn(move || {
            let ok = (|| -> std::io::Result<()> {
                let ns = std::fs::File::open(&netns)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&addr, timeout)?;
                Ok(())
            })()
            .is_ok();
            let _ = tx.send(ok);
        });
    spawned.is_ok() && rx.await.unwrap_or(false)
}

/// Host veth name of slot `n`.
pub fn veth_name(n: u32) -> String {
    format!("{VETH_PREFIX}{n}")
}

fn slot_addr(slot: u32, host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + slot * 4 + host)
}

/// The host's non-loopback resolvers from `resolv.conf`.
fn dns_servers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

fn addr_set(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ruleset with an exception for the host's own DNS servers: capsules get them in their
/// `resolv.conf`, and they often sit in a private range the forward chain otherwise drops.
fn nft_rules(resolv_conf: &str) -> String {
    let servers = dns_servers(resolv_conf);
    let dns = if servers.is_empty() {
        String::new()
    } else {
        format!(
            "iifname \"wrv*\" ip daddr {{ {} }} meta l4proto {{ udp, tcp }} th dport 53 accept",
            addr_set(&servers)
        )
    };
    NFT_RULES
        .replace("@DNS@", &dns)
        .replace("@BLOCKED@", BLOCKED_RANGES)
}

/// What every capsule's own firewall needs to know about the host.
#[derive(Debug, Clone, Default)]
pub struct HostNet {
    /// The host's resolvers (port 53 to them is let through).
    pub dns: Vec<Ipv4Addr>,
    /// The host's own IPv4 addresses, which a capsule may not open connections to.
    pub addrs: Vec<Ipv4Addr>,
}

impl HostNet {
    /// Reads the resolvers and the host's addresses.
    fn probe(resolv_conf: &str) -> Self {
        let mut addrs: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
                    .filter(|a| !a.is_loopback())
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        addrs.dedup();
        Self {
            dns: dns_servers(resolv_conf),
            addrs,
        }
    }
}

/// The ruleset of one capsule's namespace; `gateway` is the host end of its veth.
fn capsule_rules(host: &HostNet, gateway: Ipv4Addr) -> String {
    let dns = if host.dns.is_empty() {
        String::new()
    } else {
        format!(
            "ip daddr {{ {} }} meta l4proto {{ udp, tcp }} th dport 53 accept",
            addr_set(&host.dns)
        )
    };
    let host_addrs = if host.addrs.is_empty() {
        String::new()
    } else {
        format!(
            "ip daddr {{ {0} }} meta l4proto tcp counter reject with tcp reset comment \"host\"\n        \
             ip daddr {{ {0} }} counter reject with icmpx admin-prohibited",
            addr_set(&host.addrs)
        )
    };
    CAPSULE_RULES
        .replace("@DNS@", &dns)
        .replace("@BLOCKED@", BLOCKED_RANGES)
        .replace("@HOST_ADDRS@", &host_addrs)
        .replace("@GATEWAY@", &gateway.to_string())
}

/// Installs the host-wide nft table and turns on forwarding; returns what capsule firewalls
/// need to know about the host.
pub async fn setup_host() -> anyhow::Result<HostNet> {
    let resolv = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
    run_stdin("nft", &["-f", "-"], &nft_rules(&resolv))
        .await
        .context("nft table inet wrenn")?;
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .await
        .context("ip_forward=1")?;
    Ok(HostNet::probe(&resolv))
}

/// Checks that the host table is whole and puts it back when a firewall reload (`nft flush
/// ruleset`, a distribution's firewall service) removed or changed it. Returns whether it had
/// to. Capsules stay fenced in meanwhile by their own namespace's rules.
pub async fn ensure_host() -> anyhow::Result<bool> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "table", "inet", "wrenn"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("spawn nft")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && HOST_MARKERS.iter().all(|m| listing.contains(m)) {
        return Ok(false);
    }
    setup_host().await?;
    Ok(true)
}

/// Removes the host-wide nft table (forwarding is left on: other software may rely on it).
pub async fn teardown_host() -> anyhow::Result<()> {
    run_stdin(
        "nft",
        &["-f", "-"],
        "table inet wrenn\ndelete table inet wrenn\n",
    )
    .await
}

/// The network slot claims.
pub(crate) const CLAIMS: Claims = Claims::new(CLAIM_DIR, SLOTS, "network slots");

/// Claims a free slot for capsule `id` of runtime `owner`.
pub fn claim_slot(owner: &Path, id: &str) -> anyhow::Result<u32> {
    CLAIMS.claim(owner, id)
}

/// Frees slot `n`.
pub fn release_slot(n: u32) {
    CLAIMS.release(n);
}

/// Slots claimed by runtime `owner`: (slot, capsule id).
pub fn owned_slots(owner: &Path) -> Vec<(u32, String)> {
    CLAIMS.owned(owner)
}

/// Creates the namespace (and, with a slot, the veth pair, addresses and the capsule's own
/// firewall).
pub async fn create(net: &CapsuleNet, host_net: &HostNet) -> anyhow::Result<()> {
    create_timed(net, host_net, &mut super::steps::Steps::start()).await
}

/// [`create`], marking each step in `steps`.
///
/// The namespace, veth pair, addresses and route are made over rtnetlink by a thread that
/// enters the new namespace (see [`super::rtnl`]); that thread then runs `nft -f -` for the
/// capsule's firewall, which so starts inside the namespace without an `nsenter`.
pub async fn create_timed(
    net: &CapsuleNet,
    host_net: &HostNet,
    steps: &mut super::steps::Steps,
) -> anyhow::Result<()> {
    let name = net.netns.clone();
    let veth = net.slot.map(|slot| rtnl::Veth {
        host_name: veth_name(slot),
        host: slot_addr(slot, 1),
        capsule: slot_addr(slot, 2),
    });
    let rules = veth.as_ref().map(|v| capsule_rules(host_net, v.host));
    let (made, inner) = tokio::task::spawn_blocking(move || {
        let mut inner = super::steps::Steps::start();
        let made = rtnl::create_netns(&name, veth.as_ref(), || {
            inner.mark("links");
            if let Some(rules) = rules {
                run_stdin_blocking("nft", &["-f", "-"], &rules).context("capsule firewall")?;
                inner.mark("nft");
            }
            Ok(())
        });
        (made, inner)
    })
    .await
    .context("network setup task")?;
    steps.append(inner);
    made
}

/// Runs `prog args` with `input` on stdin from the calling thread (so in its network
/// namespace); fails with its stderr on a non-zero exit.
fn run_stdin_blocking(prog: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).context("write batch")?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
        );
    }
    Ok(())
}

/// Deletes the veth (if any) and the namespace; missing pieces are fine.
pub async fn destroy(net: &CapsuleNet) -> anyhow::Result<()> {
    if let Some(slot) = net.slot {
        if net.netns_path().exists() {
            // Delete the pair through its end in our own namespace: that can only ever be this
            // capsule's pair, whatever happened to the host end's name.
            let _ = run_stdin("ip", &["-n", &net.netns, "-b", "-"], "link del eth0\n").await;
        } else {
            // The namespace is gone but the host end may be left: we still hold the slot's
            // claim, so its name is ours.
            let veth = veth_name(slot);
            if Path::new("/sys/class/net").join(&veth).exists() {
                let _ = run_stdin("ip", &["-b", "-"], &format!("link del {veth}\n")).await;
            }
        }
    }
    if net.netns_path().exists() {
        run_stdin("ip", &["-b", "-"], &format!("netns del {}\n", net.netns))
            .await
            .context("netns del")?;
    }
    Ok(())
}

/// Runs `prog args` with `input` on stdin; fails with its stderr on a non-zero exit.
pub(crate) async fn run_stdin(prog: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {prog}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .context("write batch")?;
    }
    let out = child
        .wait_with_output()
        .await
        .with_context(|| format!("wait {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}; input: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            input.trim().replace('\n', "; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_addresses_are_a_slash_30() {
        let n = CapsuleNet {
            netns: "x".into(),
            slot: Some(3),
        };
        assert_eq!(n.host_ip(), Some(Ipv4Addr::new(10, 213, 0, 13)));
        assert_eq!(n.capsule_ip(), Some(Ipv4Addr::new(10, 213, 0, 14)));
        assert_eq!(veth_name(3), "wrv3");
    }
}

#[cfg(test)]
mod nft_tests {
    use super::{capsule_rules, nft_rules, HostNet, Ipv4Addr};

    fn host() -> HostNet {
        HostNet {
            dns: vec![Ipv4Addr::new(10, 255, 255, 53)],
            addrs: vec![Ipv4Addr::new(203, 0, 113, 7), Ipv4Addr::new(10, 0, 0, 2)],
        }
    }

    #[test]
    fn capsule_rules_default_deny_both_ways_with_the_exceptions_in_order() {
        let rules = capsule_rules(&host(), Ipv4Addr::new(10, 213, 0, 1));
        let pos = |needle: &str| {
            rules
                .find(needle)
                .unwrap_or_else(|| panic!("missing {needle} in {rules}"))
        };
        assert_eq!(rules.matches("policy drop;").count(), 2);
        let established = pos("ct state established,related accept");
        let dns = pos("ip daddr { 10.255.255.53 } meta l4proto { udp, tcp } th dport 53 accept");
        let blocked = pos("ip daddr { 10.0.0.0/8");
        let host_addrs = pos("ip daddr { 203.0.113.7, 10.0.0.2 } meta l4proto tcp counter reject");
        let egress = pos(r#"oifname "eth0" meta nfproto ipv4 accept"#);
        assert!(established < dns && dns < blocked && blocked < host_addrs && host_addrs < egress);
        assert!(rules.contains(r#"iifname "eth0" ip saddr 10.213.0.1 meta nfproto ipv4 accept"#));
        assert!(!rules.contains('@'), "unfilled placeholder: {rules}");
        let bare = capsule_rules(&HostNet::default(), Ipv4Addr::new(10, 213, 0, 1));
        assert!(!bare.contains('@') && !bare.contains("dport 53"));
    }

    #[test]
    fn host_dns_servers_are_let_through_before_private_ranges_drop() {
        let rules = nft_rules("nameserver 10.255.255.53\nnameserver 127.0.0.53\n");
        let dns = rules
            .find("ip daddr { 10.255.255.53 } meta l4proto")
            .expect("dns rule");
        let drop = rules.find("ip daddr { 10.0.0.0/8").expect("private drop");
        assert!(dns < drop, "the exception must come first");
        assert!(!rules.contains("127.0.0.53"));
        assert!(!nft_rules("").contains("@DNS@"));
    }

    #[test]
    fn forward_chain_admits_only_replies_into_capsules() {
        let rules = nft_rules("nameserver 10.255.255.53\n");
        let pos = |needle: &str| {
            rules
                .find(needle)
                .unwrap_or_else(|| panic!("missing {needle}"))
        };
        let c2c = pos(r#"iifname "wrv*" oifname "wrv*" drop"#);
        let replies = pos(r#"oifname "wrv*" ct state established,related accept"#);
        let inbound = pos("\n        oifname \"wrv*\" drop");
        let dns = pos("th dport 53 accept");
        let private = pos("ip daddr { 10.0.0.0/8");
        assert!(c2c < replies && replies < inbound && inbound < dns && dns < private);
        let private_line = rules[private..].lines().next().unwrap_or("");
        for range in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "0.0.0.0/8",
            "192.0.0.0/24",
            "198.18.0.0/15",
            "224.0.0.0/4",
            "240.0.0.0/4",
        ] {
            assert!(private_line.contains(range), "{range} not dropped");
        }
        assert!(private_line.trim_end().ends_with("drop"));
    }

    /// `nft -c` parses and checks the ruleset against the kernel without applying it (needs
    /// root and the nft binary; skipped otherwise).
    #[test]
    fn ruleset_passes_nft_check() {
        use std::io::Write as _;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP ruleset_passes_nft_check: needs root");
            return;
        }
        let mut child = match std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP ruleset_passes_nft_check: nft: {e}");
                return;
            }
        };
        let rules = nft_rules("nameserver 10.255.255.53\nnameserver 192.168.1.1\n")
            + &capsule_rules(&host(), Ipv4Addr::new(10, 213, 0, 1));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        let out = child.wait_with_output().expect("nft -c");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
