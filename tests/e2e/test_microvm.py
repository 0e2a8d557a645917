"""The microVM runtime through the real server and the official SDK (`WRENN_RUNTIME=microvm`):
each capsule is a QEMU guest with its own kernel; pause saves it to disk and ends QEMU;
resume brings its processes back; a paused capsule survives `kill -9` of the server;
destroy leaves no QEMU, run directory or network namespace.

Run with: WRENN_RUNTIME=microvm pytest tests/e2e/test_microvm.py (skipped otherwise; the rest
of the suite also runs against `WRENN_RUNTIME=microvm`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from wrenn import Capsule
from wrenn.exceptions import WrennNotFoundError
from wrenn.models import Status

from conftest import BUSYBOX, poll, qemu_pids as _qemu_pids

pytestmark = pytest.mark.skipif(
    os.environ.get("WRENN_RUNTIME") != "microvm", reason="needs WRENN_RUNTIME=microvm"
)


def _vm_dir(server, cid: str) -> Path:
    return server.data_dir / "microvm" / "capsules" / cid


def _sh(cap: Capsule, script: str) -> str:
    r = cap.commands.run(f"sh -c '{script}'", timeout=60)
    assert r.exit_code == 0, f"{script}: {r.stderr}"
    return r.stdout


def test_the_guest_knows_and_resolves_its_own_name(capsule):
    out = _sh(capsule, "hostname; cat /etc/hostname; ping -c 1 -W 5 $(hostname) >/dev/null && echo resolves")
    assert out.split() == [capsule.capsule_id, capsule.capsule_id, "resolves"], out


def test_capsule_is_a_guest_with_its_own_kernel(capsule, server):
    kernel = _sh(capsule, "uname -r").strip()
    assert kernel.endswith("-cloud-amd64"), kernel
    assert kernel != os.uname().release
    assert _sh(capsule, "cat /proc/1/comm").strip() == "wrenn-agent"
    assert len(_qemu_pids(capsule.capsule_id)) == 1
    capsule.files.write("/root/hello.txt", "from the host")
    assert capsule.files.read("/root/hello.txt") == "from the host"


def test_pause_ends_qemu_and_resume_restores_processes(make_capsule, server, restart_server):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    _sh(cap, "(i=0; while true; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.2; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
    pid = _sh(cap, "cat /tmp/pid").strip()
    cap.pause(wait=True)
    poll(lambda: not _qemu_pids(cid), timeout=30, interval=0.2, what="qemu gone after pause")
    state = _vm_dir(server, cid) / "state"
    assert state.exists() and state.stat().st_size > 0

    # The paused VM is only files: it survives the server dying.
    restart_server(kill=True)
    assert Capsule.get_info(cid).status.value == "paused"
    assert not _qemu_pids(cid)

    cap.resume(wait=True)
    assert _sh(cap, f"kill -0 {pid} && echo alive").strip() == "alive"
    t1 = int(_sh(cap, "cat /tmp/tick"))
    time.sleep(0.8)
    t2 = int(_sh(cap, "cat /tmp/tick"))
    assert t2 > t1, "the background loop runs on after resume"
    assert len(_qemu_pids(cid)) == 1


def test_running_vm_survives_server_kill(make_capsule, restart_server):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    _sh(cap, "echo 41 > /tmp/x")
    before = _qemu_pids(cid)
    restart_server(kill=True)
    assert _qemu_pids(cid) == before
    assert _sh(cap, "cat /tmp/x").strip() == "41"


def test_destroy_leaves_nothing(make_capsule, server):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    assert _qemu_pids(cid)
    cap.destroy(wait=True)
    assert not _qemu_pids(cid)
    assert not _vm_dir(server, cid).exists()
    assert not Path(f"/run/netns/{cid}").exists()


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _cgroups(cid: str) -> list[Path]:
    """The capsule's cgroup directories in every hierarchy (v1) or the unified one (v2)."""
    root = Path("/sys/fs/cgroup")
    return [d for d in [*root.glob(f"*/wrenn/{cid}"), root / "wrenn" / cid] if d.is_dir()]


def _memory_cgroup(cid: str) -> tuple[Path, str]:
    """The capsule's memory cgroup and the name of its limit file."""
    v1 = Path(f"/sys/fs/cgroup/memory/wrenn/{cid}")
    return (v1, "memory.limit_in_bytes") if v1.is_dir() else (Path(f"/sys/fs/cgroup/wrenn/{cid}"), "memory.max")


def _as_uid(uid: int, *cmd: str) -> subprocess.CompletedProcess:
    """``cmd`` with exactly the credentials of a confined QEMU: ``uid``:``uid``, no groups,
    no capabilities."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
         "--no-new-privs", *cmd],
        capture_output=True, text=True, timeout=30,
    )


def test_qemu_is_an_unprivileged_confined_process_of_its_own(make_capsule, server):
    """A guest that broke out into its QEMU would hold only QEMU's credentials: each VM's
    QEMU runs as a host uid of its own (never root, no capabilities, no new privileges, at most
    512 tasks) under QEMU's seccomp filter, and with those credentials the host's data, another VM's disk and
    another VM's QEMU are out of reach. Resume starts QEMU the same way."""
    a, b = make_capsule(BUSYBOX), make_capsule(BUSYBOX)
    uid_of = {}
    for cap in (a, b):
        (pid,) = _qemu_pids(cap.capsule_id)
        st = _status(pid)
        uids, gids = set(st["Uid"].split()), set(st["Gid"].split())
        assert len(uids) == 1 and gids == uids, st
        uid = int(uids.pop())
        assert uid >= 1 << 20, uid
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, st
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
        nproc = [l.split()[2:4] for l in Path(f"/proc/{pid}/limits").read_text().splitlines()
                 if l.startswith("Max processes")]
        assert nproc == [["512", "512"]], nproc
        # A cgroup of its own: host memory bounded by guest RAM plus QEMU's own (TCG's code
        # cache, devices), tasks by 512.
        mem, limit_file = _memory_cgroup(cap.capsule_id)
        assert str(pid) in (mem / "cgroup.procs").read_text().split(), mem
        guest = cap.info.memory_mb << 20
        limit = int((mem / limit_file).read_text())
        assert guest < limit <= guest + (512 << 20), (guest, limit)
        uid_of[cap.capsule_id] = (uid, pid)
    assert len({u for u, _ in uid_of.values()}) == 2, uid_of

    (ua, _), (_, pid_b) = uid_of[a.capsule_id], uid_of[b.capsule_id]
    disk_b = _vm_dir(server, b.capsule_id) / "disk.qcow2"
    for target in (disk_b, _vm_dir(server, a.capsule_id) / "disk.qcow2", server.data_dir / "vm.json"):
        r = _as_uid(ua, "head", "-c", "1", str(target))
        assert r.returncode != 0 and ("Permission denied" in r.stderr or "No such file" in r.stderr), r
    r = _as_uid(ua, "ls", str(server.data_dir))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = _as_uid(ua, "kill", "-0", str(pid_b))
    assert r.returncode != 0, f"uid {ua} could signal another VM's QEMU: {r}"

    # Whatever runs with QEMU's credentials in its cgroup cannot take more host memory than
    # the group's limit: it is killed, and the VM lives on.
    mem, limit_file = _memory_cgroup(a.capsule_id)
    over = int((mem / limit_file).read_text()) + (256 << 20)
    hog = subprocess.run(
        ["sh", "-c", f"echo $$ > {mem}/cgroup.procs && exec setpriv --reuid={ua} --regid={ua} "
         f"--clear-groups --inh-caps=-all --no-new-privs dd if=/dev/zero of=/dev/null bs={over} count=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert hog.returncode == -9, hog
    assert _sh(a, "echo alive").strip() == "alive"

    a.pause(wait=True)
    assert not _cgroups(a.capsule_id), "a paused VM keeps no cgroup"
    a.resume(wait=True)
    (pid,) = _qemu_pids(a.capsule_id)
    st = _status(pid)
    assert st["Uid"].split()[0] == str(ua) and st["Seccomp"] == "2", st
    assert str(pid) in (_memory_cgroup(a.capsule_id)[0] / "cgroup.procs").read_text().split()
    assert _sh(a, "echo back").strip() == "back"

    c = Capsule(template=BUSYBOX, wait=True)
    assert _cgroups(c.capsule_id)
    c.destroy(wait=True)
    assert not _cgroups(c.capsule_id), "a destroyed VM leaves no cgroup"


def test_a_guest_flooding_its_console_costs_the_host_no_disk(capsule, server):
    """The guest's root writes its serial console without end: the console is a bounded ring
    in QEMU, so nothing on the host grows (it was a file in the run dir)."""
    d = _vm_dir(server, capsule.capsule_id)

    def host_bytes() -> int:
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.name != "disk.qcow2")

    before = host_bytes()
    out = _sh(capsule, "yes xxxxxxxxxxxxxxx | head -c 4194304 > /dev/ttyS0 && echo written")
    assert out.strip() == "written"
    assert host_bytes() - before < 64 * 1024, sorted((f.name, f.stat().st_size) for f in d.rglob("*"))
    assert _sh(capsule, "echo alive").strip() == "alive"


def _host_links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def _ends_in_error_leaving_nothing(cap: Capsule, server, how: str, links: set[str]) -> None:
    cid = cap.capsule_id
    poll(lambda: Capsule.get_info(cid).status == Status.error, timeout=60, what=f"error after {how}")
    poll(lambda: not _qemu_pids(cid), timeout=30, what=f"no qemu after {how}")
    poll(lambda: not _vm_dir(server, cid).exists(), timeout=30, what=f"no vm dir after {how}")
    assert not Path(f"/run/netns/{cid}").exists(), how
    assert not _cgroups(cid), f"{how}: cgroups left: {_cgroups(cid)}"
    assert _host_links() <= links, f"{how}: host links left: {_host_links() - links}"


@pytest.mark.parametrize(
    "how",
    [
        "host kill -9 of qemu",
        "guest reboot -f",
        "guest poweroff -f",
        "guest kernel panic",
    ],
)
def test_a_vm_that_dies_is_an_error_and_leaves_nothing(make_capsule, server, how):
    """A guest's root can end its own VM (reboot, power off, panic) and the host can lose QEMU:
    either way the capsule turns `error`, everything it held on the host is freed, and the
    server serves the next capsule."""
    links = _host_links()
    # Not from make_capsule: an `error` capsule's destroy is a no-op, and `destroy(wait=True)`
    # raises on `error` (contract §4.3, §5.4).
    cap = Capsule(template=BUSYBOX, wait=True)
    (pid,) = _qemu_pids(cap.capsule_id)
    if how.startswith("host"):
        os.kill(pid, 9)
    else:
        cmd = {
            "guest reboot -f": "reboot -f",
            "guest poweroff -f": "poweroff -f",
            "guest kernel panic": "echo c > /proc/sysrq-trigger",
        }[how]
        # The answer may never come: the machine goes away under the command.
        with contextlib.suppress(Exception):
            cap.commands.run(f"sh -c '(sleep 0.3; {cmd}) >/dev/null 2>&1 &'", timeout=10)
    try:
        _ends_in_error_leaving_nothing(cap, server, how, links)
    finally:
        cap.destroy()
    nxt = make_capsule(BUSYBOX)
    assert _sh(nxt, "echo ok").strip() == "ok"


# ── Full-state snapshots and clones ───────────────────────────────────────────


def _via_proxy(server, cap: Capsule, path: str) -> httpx.Response | None:
    host = httpx.URL(cap.get_url(8000)).netloc.decode()
    try:
        r = httpx.get(f"{server.base_url}{path}", headers={"Host": host, "X-API-Key": server.key_alpha}, timeout=10)
    except httpx.HTTPError:
        return None
    return r if r.status_code == 200 else None


def _snapshot(wrenn_client, cap: Capsule, name: str) -> None:
    cap.create_snapshot(name=name)
    poll(lambda: name in {t.name for t in wrenn_client.snapshots.list(type="snapshot")},
         timeout=60, what=f"snapshot {name} listed")
    poll(lambda: cap.get_info().status == Status.running, timeout=30, what="source running")


def _snapshot_files(server, name: str) -> Path:
    """The snapshot's template dir (the server stores it as ``<team>.<name>``)."""
    found = list((server.data_dir / "templates").glob(f"*.{name}"))
    assert len(found) == 1, found
    return found[0]


def test_full_snapshot_keeps_processes_memory_and_gives_clones_their_own_identity(
    wrenn_client, make_capsule, server
):
    src = make_capsule(BUSYBOX)
    # In-memory state: a shell counting in its own memory, a file on a RAM-only tmpfs, and a
    # server listening on every address of the machine.
    _sh(src, "(i=0; while true; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.2; done) >/dev/null 2>&1 & echo $! > /tmp/pid")
    _sh(src, "echo only-in-ram > /dev/shm/mem")
    src.files.write("/tmp/www/index.html", "served\n")
    src.commands.run("busybox httpd -f -p 8000 -h /tmp/www", background=True)
    pid = _sh(src, "cat /tmp/pid").strip()
    name = "e2e-full-" + src.capsule_id[-6:]
    _snapshot(wrenn_client, src, name)
    at_snapshot = int(_sh(src, "cat /tmp/tick"))
    files = _snapshot_files(server, name)
    assert (files / "state").exists() and (files / "disk.qcow2").exists()
    try:
        clones = [make_capsule(name) for _ in range(2)]
        seen = []
        for c in clones:
            assert c.get_info().template == name
            # The same process, still counting from where it was (not from 1).
            assert _sh(c, f"kill -0 {pid} && echo alive").strip() == "alive"
            assert _sh(c, "cat /dev/shm/mem").strip() == "only-in-ram"
            t1 = int(_sh(c, "cat /tmp/tick"))
            time.sleep(0.6)
            t2 = int(_sh(c, "cat /tmp/tick"))
            assert t2 > t1 >= at_snapshot - 5, (at_snapshot, t1, t2)
            # Its own machine: hostname, machine id, RNG state.
            host, mid, rnd = _sh(c, "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d \" \\n\"").split()
            assert host == c.capsule_id
            # ... and the name in its files resolves to the guest itself (sudo needs it).
            named = _sh(c, "cat /etc/hostname; ping -c 1 -W 5 $(hostname) >/dev/null && echo resolves")
            assert named.split() == [c.capsule_id, "resolves"], named
            seen.append((mid, rnd))
            # Its own address: the saved httpd answers through the port proxy, which dials the
            # clone's address.
            c.files.write("/tmp/www/who", c.capsule_id)
            r = poll(lambda c=c: _via_proxy(server, c, "/who"), timeout=20, interval=0.3, what="clone reachable")
            assert r.text == c.capsule_id
        assert seen[0][0] != seen[1][0], "machine ids differ"
        assert seen[0][1] != seen[1][1], "each clone's RNG is reseeded"
        # The source runs on, on its own address.
        assert _via_proxy(server, src, "/index.html").text == "served\n"
        for c in clones:
            c.destroy(wait=True)
            assert not _qemu_pids(c.capsule_id)
            assert not _vm_dir(server, c.capsule_id).exists()
    finally:
        with contextlib.suppress(WrennNotFoundError):
            wrenn_client.snapshots.delete(name)
    assert not files.exists(), "deleting the snapshot frees its files"


def test_full_snapshot_survives_source_destroy_and_server_restart(
    wrenn_client, make_capsule, server, restart_server
):
    src = make_capsule(BUSYBOX)
    _sh(src, "echo kept > /dev/shm/mem")
    name = "e2e-keep-" + src.capsule_id[-6:]
    _snapshot(wrenn_client, src, name)
    src.destroy(wait=True)
    restart_server(kill=True)
    try:
        child = make_capsule(name)
        assert _sh(child, "cat /dev/shm/mem").strip() == "kept"
        child.destroy(wait=True)
    finally:
        with contextlib.suppress(WrennNotFoundError):
            wrenn_client.snapshots.delete(name)


def test_full_snapshot_is_refused_on_the_container_runtime(wrenn_client, make_capsule, server):
    """A snapshot holding a VM's memory can only start as a VM: asking for a container is a 400."""
    src = make_capsule(BUSYBOX)
    name = "e2e-vmonly-" + src.capsule_id[-6:]
    _snapshot(wrenn_client, src, name)
    try:
        with server.client(server.key_alpha) as api:
            r = api.post("/v1/capsules", json={"template": name, "runtime": "container"})
        assert r.status_code == 400, r.text
        assert "microvm" in r.text
    finally:
        with contextlib.suppress(WrennNotFoundError):
            wrenn_client.snapshots.delete(name)


def test_root_filesystem_is_the_disk_limit(capsule, api):
    """The guest's `/` is as large as the capsule's disk limit (writing past it is ENOSPC in
    the guest: the runtime's root test fills a small one)."""
    limit_mb = api.get(f"/v1/capsules/{capsule.capsule_id}").json()["disk_size_mb"]
    assert limit_mb > 0
    size_kib = int(_sh(capsule, "df -k / | tail -n 1").split()[1])
    # ext4 keeps a few percent for its journal and tables.
    assert limit_mb * 1024 * 0.9 < size_kib <= limit_mb * 1024, (size_kib, limit_mb)


def _guest_size(cap: Capsule) -> tuple[int, int]:
    """The guest's online CPUs and its total memory in MiB as its kernel sees them."""
    cpus, mem_kib = _sh(cap, "nproc; sed -n \"s/^MemTotal: *\\([0-9]*\\) kB/\\1/p\" /proc/meminfo").split()
    return int(cpus), int(mem_kib) // 1024


def test_a_request_below_the_guest_floor_is_recorded_at_the_size_the_vm_has(make_capsule, api):
    """A VM gets at least 128 MiB; the record (and so the API and the usage figures) says so."""
    cap = make_capsule(BUSYBOX, memory_mb=64)
    body = api.get(f"/v1/capsules/{cap.capsule_id}").json()
    assert body["memory_mb"] == 128, body
    cpus, mem_mb = _guest_size(cap)
    assert cpus == body["vcpus"]
    # The kernel keeps a little for itself: MemTotal is a few MiB under the machine's RAM.
    assert 64 < mem_mb <= 128, mem_mb


def test_capsules_from_a_full_snapshot_have_and_report_its_size(wrenn_client, make_capsule, api):
    """A saved machine's RAM cannot change size: a capsule made from a full snapshot has the
    snapshot's vCPUs and memory whatever the request says (contract §5.1: the snapshot's values
    override), and its record, the listing and the snapshot's template say the same."""
    src = make_capsule(BUSYBOX, vcpus=2, memory_mb=256)
    name = "e2e-size-" + src.capsule_id[-6:]
    _snapshot(wrenn_client, src, name)
    try:
        tpl = next(t for t in wrenn_client.snapshots.list(type="snapshot") if t.name == name)
        assert (tpl.vcpus, tpl.memory_mb) == (2, 256)
        child = make_capsule(name, vcpus=1, memory_mb=512)
        rec = api.get(f"/v1/capsules/{child.capsule_id}").json()
        assert (rec["vcpus"], rec["memory_mb"]) == (2, 256), rec
        listed = {c["id"]: c for c in api.get("/v1/capsules").json()}[child.capsule_id]
        assert (listed["vcpus"], listed["memory_mb"]) == (2, 256), listed
        cpus, mem_mb = _guest_size(child)
        assert cpus == 2
        assert 128 < mem_mb <= 256, mem_mb
        child.destroy(wait=True)
    finally:
        with contextlib.suppress(WrennNotFoundError):
            wrenn_client.snapshots.delete(name)
