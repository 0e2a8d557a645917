"""The escape suite: what root inside a capsule tries, through the real server and the official
SDK. Every attack must fail and leave the host as it was.

Only addresses on this machine are used: the capsule's own loopback, its gateway (the host end
of its veth) and a neighbour capsule's veth address.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

from conftest import MINIMAL, poll

# The start of every probe run as capsule root: `sc` (a raw syscall) and `try_` (a call) record
# "ok" or the errno's name under `out[name]`; `w` writes a file.
PROBE = r'''
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    out[name] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def try_(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def w(path, data="1"):
    with open(path, "w") as f:
        f.write(data)
'''

ATTACKS = PROBE + r'''
sc("mount", 165, b"none", b"/mnt", b"tmpfs", 0, None)
sc("umount_root", 166, b"/", 2)
sc("unshare_user", 272, 0x10000000)
sc("unshare_mount", 272, 0x00020000)
sc("setns", 308, 0, 0)
sc("bpf", 321, 0, None, 0)
sc("keyctl", 250, 0, 0, 0, 0, 0)
sc("add_key", 248, b"user", b"k", b"v", 1, -2)
sc("perf_event_open", 298, None, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("io_uring_setup", 425, 1, None)
sc("open_by_handle_at", 304, -1, None, 0)
sc("init_module", 175, None, 0, b"")
sc("finit_module", 313, -1, b"", 0)
sc("delete_module", 176, b"ext4", 0)
sc("kexec_load", 246, 0, 0, None, 0)
sc("reboot", 169, 0xfee1dead, 672274793, 0x4321fedc, None)
sc("swapon", 167, b"/tmp/x", 0)
sc("settimeofday", 164, None, None)
sc("clock_settime", 227, 0, None)
sc("syslog", 103, 3, None, 0)
sc("listmount", 458, None, None, 0, 0)
sc("statmount", 457, None, None, 0, 0)
sc("mbind", 237, None, 0, 0, None, 0, 0)
sc("set_mempolicy", 238, 0, None, 0)
sc("pivot_root", 155, b"/tmp", b"/tmp")
sc("chroot_escape_ptrace_1", 101, 16, 1, None, None)
try_("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
try_("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
try_("vsock_socket", lambda: socket.socket(40, socket.SOCK_STREAM, 0))
try_("write_proc_sys", lambda: w("/proc/sys/kernel/hostname", "pwned"))
try_("write_proc_sysrq", lambda: w("/proc/sysrq-trigger", "h"))
try_("write_sys", lambda: w("/sys/kernel/mm/transparent_hugepage/enabled", "never"))
try_("write_cgroup", lambda: w("/sys/fs/cgroup/memory/memory.limit_in_bytes", "-1"))
try_("mknod_block", lambda: os.mknod("/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0)))
try_("read_kcore", lambda: open("/proc/kcore", "rb").read(16))
try:
    out["proc1_root"] = "own" if os.stat("/proc/1/root/etc").st_ino == os.stat("/etc").st_ino else "other"
except OSError as e:
    out["proc1_root"] = errno.errorcode.get(e.errno, str(e.errno))
out["pid1"] = open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode()
out["pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
out["uid_map"] = open("/proc/self/uid_map").read().split()
out["hostname"] = socket.gethostname()
out["etc_hostname"] = open("/etc/hostname").read().strip()
out["nproc"] = len(os.sched_getaffinity(0))
out["cap_net_admin"] = bool(int([l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1], 16) & (1 << 12))
print(json.dumps(out))
'''

BLOCKED = {
    "mount", "umount_root", "unshare_user", "unshare_mount", "setns", "bpf", "keyctl", "add_key",
    "perf_event_open", "userfaultfd", "io_uring_setup", "open_by_handle_at", "init_module",
    "finit_module", "delete_module", "kexec_load", "reboot", "swapon", "settimeofday",
    "clock_settime", "syslog", "listmount", "statmount", "mbind", "set_mempolicy", "pivot_root",
    "raw_socket", "packet_socket", "vsock_socket", "mknod_block",
}
READ_ONLY = {"write_proc_sys", "write_proc_sysrq", "write_sys", "write_cgroup"}

HOST_FILES = ["/etc/passwd", "/etc/shadow", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]


def host_fingerprint() -> dict:
    out = {}
    for f in HOST_FILES:
        try:
            out[f] = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        except OSError as e:
            out[f] = f"error {e.errno}"
    out["hostname"] = socket.gethostname()
    out["kernel.hostname"] = Path("/proc/sys/kernel/hostname").read_text()
    out["thp"] = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    out["modules"] = sorted(os.listdir("/sys/module"))
    return out


def run_py(capsule, script: str, timeout: int = 60):
    capsule.files.write("/tmp/attack.py", script)
    return capsule.commands.run("python3 /tmp/attack.py", timeout=timeout)


@pytest.fixture
def host_unchanged(server):
    before = host_fingerprint()
    yield
    assert host_fingerprint() == before
    assert server.proc is not None and server.proc.poll() is None, "server died"


ON_MICROVM = os.environ.get("WRENN_RUNTIME") == "microvm"
CONTAINER_BOUNDARY = pytest.mark.skipif(
    ON_MICROVM,
    reason="microvm: root in the guest is the guest kernel's root (seccomp, the user "
    "namespace and the bounding set are the container's boundary; the VM's is QEMU)",
)


@CONTAINER_BOUNDARY
def test_root_in_a_capsule_cannot_leave_it(make_capsule, host_unchanged):
    cap = make_capsule(MINIMAL, vcpus=1)
    r = run_py(cap, ATTACKS)
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    for name in sorted(BLOCKED):
        assert got[name] in ("EPERM", "EACCES"), f"{name}: {got[name]}"
    for name in sorted(READ_ONLY):
        assert got[name] in ("EROFS", "EACCES", "EPERM", "ENOENT"), f"{name}: {got[name]}"
    assert got["read_kcore"] in ("EACCES", "EPERM", "ENOENT", "EIO"), got["read_kcore"]
    # Its own world: init is the agent, few processes, its own root, name and CPUs.
    # /proc/1/root is its own root, or (the agent is not dumpable) not reachable at all.
    assert got["proc1_root"] in ("own", "EACCES"), got["proc1_root"]
    assert got["pid1"].endswith("wrenn-agent"), got["pid1"]
    assert got["pids"] < 20, got["pids"]
    assert got["hostname"] == cap.capsule_id and got["etc_hostname"] == cap.capsule_id
    assert got["hostname"] != socket.gethostname()
    assert got["nproc"] == 1
    assert got["cap_net_admin"] is False
    # ptrace of its own init is contained by the missing CAP_SYS_PTRACE over it.
    assert got["chroot_escape_ptrace_1"] in ("EPERM", "ESRCH"), got["chroot_escape_ptrace_1"]


CGROUP_PROBE = PROBE + r'''
v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
mem = "/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/memory"
limit = os.path.join(mem, "memory.max" if v2 else "memory.limit_in_bytes")
out.update(v2=v2, limit=open(limit).read().strip(), top=sorted(os.listdir("/sys/fs/cgroup")))
out["procs"] = sorted(int(p) for p in open(os.path.join(mem, "cgroup.procs")).read().split())
out["mine"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
try_("write_limit", lambda: w(limit, "-1" if not v2 else "max"))
try_("write_procs", lambda: w(os.path.join(mem, "cgroup.procs"), str(os.getpid())))
try_("mkdir_child", lambda: os.mkdir(os.path.join(mem, "child")))
try_("write_top", lambda: w("/sys/fs/cgroup/planted", "x"))
out["parent"] = sorted(os.listdir(os.path.join(mem, "..")))
MS_REMOUNT, MS_BIND = 32, 4096
sc("remount_rw", 165, None, mem.encode(), None, MS_REMOUNT | MS_BIND, None)
sc("remount_top_rw", 165, None, b"/sys/fs/cgroup", None, MS_REMOUNT, None)
sc("umount", 166, mem.encode(), 2)
out["limit_after"] = open(limit).read().strip()
print(json.dumps(out))
'''


@CONTAINER_BOUNDARY
def test_a_capsule_reads_its_own_cgroups_and_cannot_change_them(make_capsule, host_unchanged):
    """/sys/fs/cgroup shows the capsule its own groups (a JVM or the code interpreter sizes
    itself from them; /proc/meminfo shows the host), read-only: root cannot write a limit, move
    a process, make a child group, plant a file, remount or unmount them, nor climb to the
    parent group; the host's limit is unchanged."""
    cap = make_capsule(MINIMAL, vcpus=1, memory_mb=256)
    host_limit = next(
        p for p in (
            Path(f"/sys/fs/cgroup/memory/wrenn/{cap.capsule_id}/memory.limit_in_bytes"),
            Path(f"/sys/fs/cgroup/wrenn/{cap.capsule_id}/memory.max"),
        ) if p.exists()
    )
    before = host_limit.read_text()
    r = run_py(cap, CGROUP_PROBE)
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["limit"] == str(256 << 20) == got["limit_after"] == before.strip(), got
    # Its own processes and no other (the probe's pids, in its pid namespace).
    assert set(got["procs"]) <= set(got["mine"]) and 1 in got["procs"], got
    if not got["v2"]:
        assert got["top"] == ["cpu", "cpuacct", "memory", "pids"], got["top"]
        # `..` of its memory group is the read-only tmpfs, not the host's `wrenn` group.
        assert got["parent"] == got["top"], got["parent"]
    for name in ("write_limit", "write_procs", "mkdir_child", "write_top"):
        assert got[name] in ("EROFS", "EACCES", "EPERM"), f"{name}: {got[name]}"
    for name in ("remount_rw", "remount_top_rw", "umount"):
        assert got[name] in ("EPERM", "EACCES"), f"{name}: {got[name]}"
    assert host_limit.read_text() == before


def test_capsule_cannot_reach_the_api_server_or_the_host(make_capsule, server, host_unchanged):
    cap = make_capsule(MINIMAL)
    script = f'''
import json, socket
def conn(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "connected"
    except OSError as e:
        return type(e).__name__
gw = [l.split()[2] for l in open("/proc/net/route") if l.split()[1] == "00000000"][0]
gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])
print(json.dumps({{"gw": gw, "gw_api": conn(gw, {server.port}), "gw_ssh": conn(gw, 22),
                   "lo_api": conn("127.0.0.1", {server.port})}}))
'''
    r = run_py(cap, script)
    got = json.loads(r.stdout)
    for k in ("gw_api", "gw_ssh", "lo_api"):
        assert got[k] != "connected", got


def test_capsules_cannot_reach_each_other(make_capsule, host_unchanged):
    a, b = make_capsule(MINIMAL), make_capsule(MINIMAL)
    a.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1", background=True)
    addr = a.commands.run(
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.connect(('10.213.0.1', 9)); print(s.getsockname()[0])\""
    ).stdout.strip()
    assert addr.startswith("10.213."), addr
    # Positive control: a serves on its own loopback.
    ok = a.commands.run("python3 -c \"import urllib.request as u; "
                        "print(u.urlopen('http://127.0.0.1:8000/', timeout=5).status)\"")
    assert ok.stdout.strip() == "200", ok
    r = b.commands.run(
        f"python3 -c \"import socket; s=socket.socket(); s.settimeout(3); s.connect(('{addr}', 8000))\""
    )
    assert r.exit_code != 0 and "Error" in r.stderr, r


def test_host_never_follows_capsule_symlinks(make_capsule, server, wrenn_client, host_unchanged):
    cap = make_capsule(MINIMAL)
    cap.commands.run("ln -s /etc/shadow /tmp/shadow && ln -s / /tmp/hostroot && "
                     "echo capsule-own > /tmp/own")
    host_shadow = Path("/etc/shadow").read_bytes()
    got = cap.files.read_bytes("/tmp/shadow")
    assert got != host_shadow, "the files API followed a symlink to the host"
    assert cap.files.read("/tmp/hostroot/tmp/own") == "capsule-own\n"
    streamed = b"".join(cap.files.download_stream("/tmp/shadow"))
    assert streamed == got
    # A snapshot copies the link itself, never what it points at on the host.
    name = "escape-links-" + cap.capsule_id[-6:]
    cap.create_snapshot(name=name)
    try:
        poll(lambda: name in {t.name for t in wrenn_client.snapshots.list(type="snapshot")},
             timeout=120, what=f"snapshot {name} listed")
        if ON_MICROVM:
            # The snapshot is the guest's disk and memory, which the host never walks: a
            # capsule made from it still has the link, to its own /etc/shadow.
            child = make_capsule(name)
            assert child.commands.run("readlink /tmp/shadow").stdout == "/etc/shadow\n"
            assert child.files.read_bytes("/tmp/shadow") != host_shadow
            child.destroy(wait=True)
        else:
            trees = list((Path(server.data_dir) / "templates").glob(f"*{name}*/rootfs/tmp/shadow"))
            assert trees, "snapshot tree not found"
            assert all(os.path.islink(t) for t in trees)
            assert all(os.readlink(t) == "/etc/shadow" for t in trees)
    finally:
        poll(lambda: cap.get_info().status.value == "running", timeout=60, what="source running")
        wrenn_client.snapshots.delete(name)


def test_another_teams_key_reaches_nothing(make_capsule, api_beta):
    cap = make_capsule()
    cid = cap.capsule_id
    routes = [
        ("GET", f"/v1/capsules/{cid}", None),
        ("POST", f"/v1/capsules/{cid}/pause", None),
        ("POST", f"/v1/capsules/{cid}/resume", None),
        ("POST", f"/v1/capsules/{cid}/ping", None),
        ("GET", f"/v1/capsules/{cid}/metrics", None),
        ("POST", f"/v1/capsules/{cid}/exec", {"cmd": "true"}),
        ("GET", f"/v1/capsules/{cid}/processes", None),
        ("DELETE", f"/v1/capsules/{cid}/processes/1", None),
        ("POST", f"/v1/capsules/{cid}/files/read", {"path": "/etc/hostname"}),
        ("POST", f"/v1/capsules/{cid}/files/stream/read", {"path": "/etc/hostname"}),
        ("POST", f"/v1/capsules/{cid}/files/list", {"path": "/"}),
        ("POST", f"/v1/capsules/{cid}/files/mkdir", {"path": "/tmp/x"}),
        ("POST", f"/v1/capsules/{cid}/files/remove", {"path": "/tmp"}),
        ("POST", "/v1/snapshots", {"sandbox_id": cid, "name": "stolen"}),
        ("DELETE", f"/v1/capsules/{cid}", None),
    ]
    for method, path, body in routes:
        r = api_beta.request(method, path, json=body)
        assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
    assert cap.commands.run("echo still-mine").stdout == "still-mine\n"


def test_mountinfo_names_no_team_template_or_disk(make_capsule, wrenn_client, server):
    src = make_capsule()
    name = "escape-mi-" + src.capsule_id[-6:]
    src.create_snapshot(name=name)
    try:
        poll(lambda: name in {t.name for t in wrenn_client.snapshots.list(type="snapshot")},
             timeout=60, what=f"snapshot {name} listed")
        child = make_capsule(name)
        info = child.commands.run("cat /proc/self/mountinfo").stdout
        root = [line for line in info.splitlines() if line.split()[4] == "/"]
        assert root, info
        # A microVM's root is its own disk (`/dev/vda`), with nothing of the host to name.
        assert ("/dev/vda" if ON_MICROVM else "overlay") in root[0], info
        for leak in ("team-", "/templates/", "/capsules/", "disk", str(server.data_dir),
                     str(server.cache)):
            assert leak not in info, f"{leak!r} visible in the capsule's mountinfo:\n{info}"
        # The agent's read-only dir is bound from a neutral host dir, not the data dir.
        wrenn = [line for line in info.splitlines() if line.split()[4] == "/.wrenn"]
        assert wrenn, info
        if not ON_MICROVM:
            assert "/wrenn/rt/" in wrenn[0].split()[3], info
            assert child.capsule_id in root[0]
        child.destroy(wait=True)
    finally:
        poll(lambda: src.get_info().status.value == "running", timeout=60, what="source running")
        wrenn_client.snapshots.delete(name)


SETUID_PROBE = r'''
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
out = {"ruid": os.getuid(), "euid": os.geteuid()}
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapBnd"):
    out[k] = status[k].strip()
out["uid_map"] = open("/proc/self/uid_map").read().split()
def sc(name, nr, *args):
    r = libc.syscall(nr, *args)
    out[name] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
sc("mount", 165, b"none", b"/mnt", b"tmpfs", 0, None)
sc("unshare_user", 272, 0x10000000)
sc("ptrace_agent", 101, 16, 1, None, None)
try:
    open("/proc/1/mem", "rb").read(1)
    out["agent_mem"] = "ok"
except OSError as e:
    out["agent_mem"] = errno.errorcode.get(e.errno, str(e.errno))
agent = dict(l.split(":", 1) for l in open("/proc/1/status") if ":" in l)
out["agent_CapBnd"] = agent["CapBnd"].strip()
print(json.dumps(out))
'''

DROP_TO_NOBODY = r'''
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.execv(sys.argv[1], sys.argv[1:])
'''


@CONTAINER_BOUNDARY
def test_a_planted_setuid_root_binary_gives_capsule_root_only(make_capsule, host_unchanged):
    """Capsules have no `no_new_privs` (so `sudo` works, as in Docker): a setuid-root binary
    planted by capsule root raises `nobody` to capsule root, which is still the capsule's
    unprivileged host uid range, under the same seccomp filter and bounding set."""
    cap = make_capsule(MINIMAL, vcpus=1)
    root_map = cap.commands.run("cat /proc/self/uid_map").stdout.split()
    assert root_map != ["0", "0", "4294967295"], root_map
    capsule_root_host_uid = int(root_map[1])
    assert capsule_root_host_uid > 0, root_map
    cap.files.write("/tmp/probe.py", SETUID_PROBE)
    cap.files.write("/tmp/drop.py", DROP_TO_NOBODY)
    r = cap.commands.run(
        "cp \"$(readlink -f \"$(command -v python3)\")\" /usr/local/bin/suidpy && "
        "chmod 4755 /usr/local/bin/suidpy && "
        "python3 /tmp/drop.py /usr/local/bin/suidpy /tmp/probe.py"
    )
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    # The bit is honoured inside: nobody became capsule root ...
    assert got["ruid"] == 65534 and got["euid"] == 0, got
    # ... of the same user namespace (no more host ids than before) ...
    assert got["uid_map"] == root_map, got
    # ... still filtered, with the capsule's bounding set (no CAP_SYS_ADMIN, bit 21) ...
    assert got["Seccomp"] == "2", got
    assert int(got["CapBnd"], 16) == int(got["CapEff"], 16) == 0xA00405FB, got
    assert got["mount"] in ("EPERM", "EACCES") and got["unshare_user"] in ("EPERM", "EACCES"), got
    # ... and unable to ptrace or read the agent (not dumpable; no CAP_SYS_PTRACE).
    assert got["ptrace_agent"] in ("EPERM", "ESRCH"), got
    assert got["agent_mem"] in ("EPERM", "EACCES"), got
    assert int(got["agent_CapBnd"], 16) & (1 << 21) == 0, got
