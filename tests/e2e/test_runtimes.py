"""A server serving both backends (`wrenn serve --runtime both`): a create names its backend
with `"runtime"`, every later call reaches the capsule on the backend that made it (also after
`kill -9` of the server), and a backend the server does not serve is a 400.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import BUSYBOX, WrennServer, assert_error, capsule_ids, poll, qemu_pids as _qemu_pids, wait_status


def _run(client, cid: str, script: str) -> str:
    r = client.post(
        f"/v1/capsules/{cid}/exec",
        json={"cmd": "/bin/sh", "args": ["-c", script], "background": False, "timeout_sec": 60},
        timeout=90,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_code"] == 0, body
    return body["stdout"].strip()


@pytest.fixture
def both_server(tmp_path):
    # The server inherits an open fd on a host file, as from a supervisor; no program it starts
    # (QEMU, a capsule's launcher) may hold it.
    secret = tmp_path / "inherited-secret"
    secret.write_text("host only\n")
    fd = os.open(secret, os.O_RDONLY)
    srv = WrennServer(
        ["--runtime", "both", "--no-prebuild", "--warm", "code-runner-beta=0,code-interpreter-v1=0"],
        inherit_fds=(fd,),
    )
    srv.inherited = secret
    try:
        try:
            srv.start(timeout=90)
        finally:
            os.close(fd)  # the server has its own copy now
        yield srv
    finally:
        try:
            srv.destroy_all()
        finally:
            srv.stop()
            shutil.rmtree(srv.data_dir, ignore_errors=True)


def _holders(path: Path) -> set[int]:
    """Pids of processes with an open fd on `path`."""
    out = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fds = list((p / "fd").iterdir())
        except OSError:
            continue
        for f in fds:
            try:
                if os.readlink(f) == str(path):
                    out.add(int(p.name))
            except OSError:
                pass
    return out


def test_each_capsule_runs_on_the_backend_it_named(both_server):
    srv = both_server
    with srv.client(srv.key_alpha) as c:
        r = c.post("/v1/capsules", json={"template": BUSYBOX, "runtime": "microvm"})
        assert r.status_code == 202, r.text
        vm = r.json()["id"]
        r = c.post("/v1/capsules", json={"template": BUSYBOX})
        assert r.status_code == 202, r.text
        ct = r.json()["id"]
        vm_rec = wait_status(c, vm, {"running"}, timeout=120, fail_on={"error", "stopped"})
        ct_rec = wait_status(c, ct, {"running"}, timeout=60, fail_on={"error", "stopped"})
        assert vm_rec["metadata"]["vmm_version"] == "microvm"
        assert ct_rec["metadata"]["vmm_version"] == "container"
        assert len(_qemu_pids(vm)) == 1 and not _qemu_pids(ct)
        # Only the server holds what it inherited: not QEMU, not a capsule's processes.
        assert _holders(srv.inherited) == {srv.pid}
        # The guest has its own kernel; the container shares the host's.
        assert _run(c, vm, "uname -r").endswith("-cloud-amd64")
        assert _run(c, ct, "uname -r") == os.uname().release

        # Recovery asks both backends: after kill -9 each capsule is re-adopted by its own.
        _run(c, vm, "echo 7 > /tmp/x")
        srv.stop(kill=True)
        srv.start(timeout=90)
        assert capsule_ids(c) >= {vm, ct}
        assert _run(c, vm, "cat /tmp/x") == "7"
        assert _run(c, ct, "echo ok") == "ok"

        # Pause goes to the VM's backend: QEMU ends, resume brings the guest back.
        assert c.post(f"/v1/capsules/{vm}/pause").status_code in (200, 202, 204)
        wait_status(c, vm, {"paused"}, timeout=60)
        poll(lambda: not _qemu_pids(vm), timeout=30, interval=0.2, what="qemu gone after pause")
        assert c.post(f"/v1/capsules/{vm}/resume").status_code in (200, 202, 204)
        wait_status(c, vm, {"running"}, timeout=60)
        assert _run(c, vm, "cat /tmp/x") == "7"

        for cid in (vm, ct):
            c.delete(f"/v1/capsules/{cid}")
        for cid in (vm, ct):
            wait_status(c, cid, {"stopped"}, timeout=60)
        assert not _qemu_pids(vm)
        assert not (srv.data_dir / "microvm" / "capsules" / vm).exists()


def test_a_backend_not_served_is_a_400(api):
    served = os.environ.get("WRENN_RUNTIME", "container")
    if served in ("both", "auto"):
        pytest.skip("the session server may serve both backends")
    other = "container" if served == "microvm" else "microvm"
    before = capsule_ids(api)
    err = assert_error(api.post("/v1/capsules", json={"runtime": other}), 400, "invalid_request")
    assert f"runtime {other} is not available" in err["message"]
    err = assert_error(api.post("/v1/capsules", json={"runtime": "qemu"}), 400, "invalid_request")
    assert "runtime must be one of" in err["message"]
    assert capsule_ids(api) == before
