"""The microVM runtime through the real server and the official SDK (`WRENN_RUNTIME=microvm`):
each capsule is a QEMU guest with its own kernel; pause saves it to disk and ends QEMU;
resume brings its processes back; a paused capsule survives `kill -9` of the server;
destroy leaves no QEMU, run directory or network namespace.

Run with: WRENN_RUNTIME=microvm pytest tests/e2e/test_microvm.py (skipped otherwise; the rest
of the suite also runs against `WRENN_RUNTIME=microvm`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from wrenn import Capsule

from conftest import BUSYBOX, poll

pytestmark = pytest.mark.skipif(
    os.environ.get("WRENN_RUNTIME") != "microvm", reason="needs WRENN_RUNTIME=microvm"
)


def _qemu_pids(cid: str) -> list[int]:
    """Host pids of QEMU processes of capsule ``cid`` (named ``wrenn-<id>``)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and f"wrenn-{cid}".encode() in b" ".join(cmd):
            out.append(int(p.name))
    return out


def _vm_dir(server, cid: str) -> Path:
    return server.data_dir / "microvm" / "capsules" / cid


def _sh(cap: Capsule, script: str) -> str:
    r = cap.commands.run(f"sh -c '{script}'", timeout=60)
    assert r.exit_code == 0, f"{script}: {r.stderr}"
    return r.stdout


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


def test_root_filesystem_is_the_disk_limit(capsule, api):
    """The guest's `/` is as large as the capsule's disk limit (writing past it is ENOSPC in
    the guest: the runtime's root test fills a small one)."""
    limit_mb = api.get(f"/v1/capsules/{capsule.capsule_id}").json()["disk_size_mb"]
    assert limit_mb > 0
    size_kib = int(_sh(capsule, "df -k / | tail -n 1").split()[1])
    # ext4 keeps a few percent for its journal and tables.
    assert limit_mb * 1024 * 0.9 < size_kib <= limit_mb * 1024, (size_kib, limit_mb)
