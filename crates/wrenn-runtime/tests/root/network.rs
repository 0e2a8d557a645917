//! Capsule networking. Only addresses this machine owns (veths we create) are ever contacted.

use std::time::Duration;

use wrenn_runtime::NetworkMode;

use crate::common::*;

/// Starts a one-shot `hello` server on port 7000 in the capsule.
async fn listen(c: &Capsule) {
    let req = wrenn_types::agent::ExecRequest {
        process: wrenn_types::agent::ProcessSpec {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "nc -l -p 7000 -e echo hello".into()],
            ..Default::default()
        },
        background: true,
        ..Default::default()
    };
    c.client.exec(&req).await.expect("start listener");
}

/// Connects from the host to the capsule's port 7000 and reads what it says.
async fn host_fetch(c: &Capsule, ip: std::net::Ipv4Addr) -> String {
    use tokio::io::AsyncReadExt;
    listen(c).await;
    let conn = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect((ip, 7000)).await.ok()
    })
    .await;
    let mut s = conn.expect("host connects to capsule");
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_capsule_has_address_and_reaches_its_host_veth() {
    if !privileged("egress_capsule_has_address") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let ip = c.handle.ip.expect("egress capsule has an address");
    let host = t.rt.host_ip(c.id()).expect("host veth address");
    let r = sh(
        &c,
        "ip -4 addr show eth0; ip route; cat /sys/class/net/lo/flags",
    )
    .await;
    assert!(r.stdout.contains(&format!("inet {ip}/30")), "{r:?}");
    assert!(r.stdout.contains(&format!("default via {host}")), "{r:?}");
    // lo is up: IFF_UP (0x1) set.
    let flags = r
        .stdout
        .lines()
        .last()
        .unwrap_or("0x0")
        .trim()
        .trim_start_matches("0x");
    assert_eq!(u32::from_str_radix(flags, 16).unwrap_or(0) & 1, 1, "{r:?}");
    // Capsule → its host veth: refused (a reset) by the capsule's own firewall before anything
    // leaves it (no service is offered to capsules).
    let r = sh(&c, &format!("nc -w 5 {host} 9 </dev/null; echo rc=$?")).await;
    assert!(r.stderr.contains("refused"), "{r:?}");
    // Host → capsule over the veth, a full TCP exchange.
    assert_eq!(host_fetch(&c, ip).await, "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsules_cannot_reach_each_other() {
    if !privileged("capsules_cannot_reach_each_other") {
        return;
    }
    let t = TestRuntime::new();
    let a = t.capsule("busybox", NetworkMode::Egress).await;
    let b = t.capsule("busybox", NetworkMode::Egress).await;
    let b_ip = b.handle.ip.expect("ip");
    // Positive control: the host reaches b's listener.
    assert_eq!(host_fetch(&b, b_ip).await, "hello\n");
    listen(&b).await;
    let r = sh(&a, &format!("nc -w 2 {b_ip} 7000 </dev/null; echo rc=$?")).await;
    assert!(
        !r.stdout.contains("hello"),
        "capsule reached another capsule: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_capsule_has_only_loopback() {
    if !privileged("isolated_capsule_has_only_loopback") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Isolated).await;
    assert!(c.handle.ip.is_none());
    let r = sh(&c, "ls /sys/class/net; cat /sys/class/net/lo/flags").await;
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("lo"), "{r:?}");
    let flags = lines
        .next()
        .unwrap_or("0x0")
        .trim()
        .trim_start_matches("0x");
    assert_eq!(
        u32::from_str_radix(flags, 16).unwrap_or(0) & 1,
        1,
        "lo down: {r:?}"
    );
    assert_eq!(lines.next(), None, "{r:?}");
}

/// A stand-in for another machine on the LAN: a network namespace joined to the host by a veth
/// (198.51.100.0/30, TEST-NET-2), routing 10.213.0.0/16 via the host. Removed on drop.
struct LanPeer {
    ns: String,
    veth: String,
}

impl LanPeer {
    fn new() -> Self {
        let tag = std::process::id() % 100_000;
        let peer = Self {
            ns: format!("wrenn-lan-{tag}"),
            veth: format!("wrl{tag}"),
        };
        let batch = format!(
            "netns add {ns}\n\
             link add {v} type veth peer name eth0 netns {ns}\n\
             addr add 198.51.100.1/30 dev {v}\n\
             link set {v} up\n",
            ns = peer.ns,
            v = peer.veth
        );
        ip(&["-b", "-"], &batch);
        ip(
            &["-n", &peer.ns, "-b", "-"],
            "link set lo up\naddr add 198.51.100.2/30 dev eth0\nlink set eth0 up\n\
             route add 10.213.0.0/16 via 198.51.100.1\n",
        );
        peer
    }

    /// `nc` from the peer to `ip:port`; what it read.
    fn fetch(&self, ip: std::net::Ipv4Addr, port: u16) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "busybox", "nc", "-w", "3"])
            .arg(ip.to_string())
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ip netns exec nc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for LanPeer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

fn ip(args: &[&str], input: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write ip batch");
    assert!(
        child.wait().expect("wait ip").success(),
        "ip {args:?}: {input}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_machines_cannot_route_to_capsule_ports() {
    if !privileged("other_machines_cannot_route_to_capsule_ports") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let ip = c.handle.ip.expect("ip");
    // The host itself (what the port proxy does) still connects.
    assert_eq!(host_fetch(&c, ip).await, "hello\n");
    let lan = LanPeer::new();
    // Positive control: the peer reaches the host over its link.
    let r = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lan.ns,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "198.51.100.1",
        ])
        .output()
        .expect("ping");
    assert!(r.status.success(), "peer cannot reach host: {r:?}");
    listen(&c).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = tokio::task::spawn_blocking(move || {
        let got = lan.fetch(ip, 7000);
        drop(lan);
        got
    })
    .await
    .expect("fetch task");
    assert!(
        !got.contains("hello"),
        "a routed peer reached the capsule: {got:?}"
    );
}

/// The `packets` of the counter on the rule with `comment` in the capsule's own firewall.
fn capsule_counter(id: &str, comment: &str) -> u64 {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{id}"))
        .args(["nft", "list", "chain", "inet", "capsule", "output"])
        .output()
        .expect("nsenter nft");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment} in {text}"));
    let after = line.split("packets ").nth(1).expect("counter");
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("packet count")
}

/// A reload of the host firewall (here: our table deleted) neither opens the capsule's way to
/// the host nor lasts: the capsule's own rules drop the attempt meanwhile, and the watchdog
/// puts the host table back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_firewall_holds_without_the_host_table_and_the_table_comes_back() {
    if !privileged("capsule_firewall_holds") {
        return;
    }
    let t = TestRuntime::new();
    let c = t.capsule("busybox", NetworkMode::Egress).await;
    let host = t.rt.host_ip(c.id()).expect("host veth address");
    // Capsule root cannot touch its namespace's firewall: no CAP_NET_ADMIN there.
    let r = sh(
        &c,
        "grep CapEff /proc/self/status; ip link set lo down; echo rc=$?",
    )
    .await;
    let cap_eff = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    assert_eq!(cap_eff & (1 << 12), 0, "CAP_NET_ADMIN held: {r:?}");
    assert!(
        r.stderr.contains("not permitted") && !r.stdout.contains("rc=0"),
        "{r:?}"
    );

    // A host service on the veth address, reachable only if nothing filters.
    let listener = std::net::TcpListener::bind((host, 0)).expect("bind host veth");
    let port = listener.local_addr().expect("addr").port();
    let blocked0 = capsule_counter(c.id(), "blocked");
    let del = std::process::Command::new("nft")
        .args(["delete", "table", "inet", "wrenn"])
        .status()
        .expect("nft delete");
    assert!(del.success());
    let r = sh(&c, &format!("nc -w 2 {host} {port} </dev/null; echo rc=$?")).await;
    assert!(r.stderr.contains("refused"), "{r:?}");
    assert!(capsule_counter(c.id(), "blocked") > blocked0, "{r:?}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "the capsule reached the host");

    let back = wait_until(Duration::from_secs(10), || async {
        let out = tokio::process::Command::new("nft")
            .args(["list", "table", "inet", "wrenn"])
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("wrenn:forward")).then_some(())
    })
    .await;
    assert!(back.is_some(), "host table not restored");
}
