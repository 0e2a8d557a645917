"""Server restarts (graceful SIGTERM and `kill -9`) must not lose running capsules."""

from __future__ import annotations

import pytest
from wrenn import Capsule
from wrenn.exceptions import WrennNotFoundError
from wrenn.models import Status

from conftest import BUSYBOX, poll

pytestmark = pytest.mark.restart

MODES = pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])


def _status(cid: str) -> Status | None:
    try:
        return Capsule.get_info(cid).status
    except WrennNotFoundError:
        return None


def _wait_running(cid: str) -> None:
    """After a restart the capsule must report `running` (allow the server a few seconds to
    re-adopt it; fail at once on a terminal state)."""

    def check():
        st = _status(cid)
        assert st not in (None, Status.stopped, Status.error), f"{cid} is {st} after restart"
        return st == Status.running

    poll(check, timeout=15, interval=0.25, what=f"{cid} running after restart")


@MODES
def test_running_capsule_survives_restart(make_capsule, restart_server, kill):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    cap.files.write("/tmp/persist.txt", "survives")
    bg = cap.commands.run("sleep 1000", background=True, tag="survivor")

    restart_server(kill=kill)

    _wait_running(cid)
    assert cid in {c.id for c in Capsule.list()}
    # Fresh SDK object, as a client would after a server restart.
    again = Capsule.connect(cid)
    try:
        assert again.files.read("/tmp/persist.txt") == "survives"
        r = again.commands.run(f"kill -0 {bg.pid} && echo alive")
        assert r.stdout == "alive\n", f"background process lost across restart: {r}"
        procs = {p.pid: p for p in again.commands.list()}
        assert bg.pid in procs, procs
        assert procs[bg.pid].tag == "survivor"
        assert again.commands.run("echo after").stdout == "after\n"
        # New work still possible, including lifecycle operations.
        again.files.write("/tmp/new.txt", "new")
        assert again.files.read("/tmp/new.txt") == "new"
        again.pause(wait=True)
        again.resume(wait=True)
        assert again.files.read("/tmp/persist.txt") == "survives"
    finally:
        again._client.close()
    # The old SDK object (stale keep-alive connections) keeps working too.
    assert cap.commands.run("cat /tmp/persist.txt").stdout == "survives"


@MODES
def test_paused_and_destroyed_capsules_keep_their_state(make_capsule, restart_server, kill):
    paused = make_capsule(BUSYBOX)
    paused.files.write("/tmp/p.txt", "paused-data")
    paused.pause(wait=True)
    gone = make_capsule(BUSYBOX)
    gone.destroy(wait=True)

    restart_server(kill=kill)

    assert _status(paused.capsule_id) == Status.paused
    assert _status(gone.capsule_id) in (None, Status.stopped)
    listed = {c.id for c in Capsule.list()}
    assert paused.capsule_id in listed and gone.capsule_id not in listed

    paused.resume(wait=True)
    assert paused.files.read("/tmp/p.txt") == "paused-data"


@MODES
def test_create_works_after_restart(make_capsule, restart_server, kill):
    restart_server(kill=kill)
    cap = make_capsule(BUSYBOX)
    assert cap.commands.run("echo fresh").stdout == "fresh\n"
