"""Capsule lifecycle through the official SDK: create, info, list, pause/resume, destroy."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from wrenn import Capsule
from wrenn.exceptions import WrennNotFoundError
from wrenn.models import Status

from conftest import BUSYBOX, ID_RE, MINIMAL, mounts_under, poll, wait_status


def test_create_wait_info_and_list(capsule):
    assert ID_RE.match(capsule.capsule_id), capsule.capsule_id
    # The create response itself must already be a parseable Capsule.
    assert capsule.info is not None

    info = capsule.get_info()
    assert info.id == capsule.capsule_id
    assert info.status == Status.running
    assert info.template == BUSYBOX
    assert isinstance(info.vcpus, int) and info.vcpus > 0
    assert isinstance(info.memory_mb, int) and info.memory_mb > 0
    assert isinstance(info.created_at, datetime) and info.created_at.tzinfo is not None
    assert info.started_at is not None and info.started_at.tzinfo is not None
    assert info.started_at >= info.created_at
    assert capsule.is_running()

    # Static form of get_info.
    assert Capsule.get_info(capsule.capsule_id).id == capsule.capsule_id

    listed = {c.id: c for c in Capsule.list()}
    assert capsule.capsule_id in listed
    assert listed[capsule.capsule_id].status == Status.running


def test_create_response_is_async_or_sync(server, make_capsule):
    """§5.1: 202 + starting (or v0.1.5-style running); wait=False must return immediately."""
    cap = make_capsule(BUSYBOX, wait=False)
    assert cap.info.status in (Status.starting, Status.pending, Status.running)
    cap.wait_ready()
    assert cap.get_info().status == Status.running


def test_create_with_resources_and_timeout(make_capsule):
    cap = make_capsule(BUSYBOX, vcpus=2, memory_mb=256, timeout=10)
    info = cap.get_info()
    assert info.vcpus == 2
    assert info.memory_mb == 256
    # §4.4: positive values below 60 are clamped to 60.
    assert info.timeout_sec == 60


def test_default_template_is_minimal_alias(make_capsule):
    """`Capsule()` without a template boots the default template."""
    cap = make_capsule(template=None)
    info = cap.get_info()
    assert info.status == Status.running
    assert info.template in ("minimal", "minimal-ubuntu")


def test_ping(capsule):
    capsule.ping()
    info = capsule.get_info()
    assert info.last_active_at is None or info.last_active_at.tzinfo is not None


def test_pause_resume_keeps_state(capsule):
    capsule.files.write("/tmp/before-pause.txt", "still here")
    handle = capsule.commands.run("sleep 600", background=True, tag="sleeper")
    assert handle.pid > 0

    paused = capsule.pause(wait=True)
    assert paused.status == Status.paused
    assert capsule.get_info().status == Status.paused
    # Paused capsules stay in the list.
    assert capsule.capsule_id in {c.id for c in Capsule.list()}

    resumed = capsule.resume(wait=True)
    assert resumed.status == Status.running

    assert capsule.files.read("/tmp/before-pause.txt") == "still here"
    pids = {p.pid for p in capsule.commands.list()}
    assert handle.pid in pids, f"background sleep {handle.pid} gone after resume: {pids}"
    r = capsule.commands.run(f"kill -0 {handle.pid} && echo alive")
    assert r.exit_code == 0 and r.stdout.strip() == "alive", r


def test_pause_and_resume_are_idempotent(capsule):
    """§4.2: pause of a paused capsule and resume of a running one answer 2xx."""
    capsule.resume()  # running → no-op
    capsule.pause(wait=True)
    again = capsule.pause()
    assert again.status in (Status.paused, Status.pausing)
    capsule.resume(wait=True)
    assert capsule.get_info().status == Status.running


def test_static_pause_resume_destroy(make_capsule):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    assert Capsule.pause(cid, wait=True).status == Status.paused
    assert Capsule.resume(cid, wait=True).status == Status.running
    Capsule.destroy(cid, wait=True)
    _assert_gone(cid)


def test_connect_resumes_paused_capsule(capsule):
    capsule.files.write("/tmp/x", "1")
    capsule.pause(wait=True)
    again = Capsule.connect(capsule.capsule_id)
    try:
        assert again.get_info().status == Status.running
        assert again.files.read("/tmp/x") == "1"
    finally:
        again._client.close()


def test_destroy_wait_then_stopped_or_404(make_capsule, server):
    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    assert cap.commands.run("echo hi").stdout == "hi\n"
    cap.destroy(wait=True)
    _assert_gone(cid)
    poll(lambda: not [m for m in mounts_under(server.data_dir) if cid in m], timeout=10,
         what=f"mounts of {cid} released after destroy")
    assert cid not in {c.id for c in Capsule.list()}
    # DELETE is idempotent (the SDK retries it): a second destroy must not raise.
    try:
        cap.destroy()
    except WrennNotFoundError:
        pytest.fail("DELETE of a destroyed capsule must be a 2xx no-op (§5.4)")


def test_destroy_paused_capsule(make_capsule):
    cap = make_capsule(BUSYBOX)
    cap.pause(wait=True)
    cap.destroy(wait=True)
    _assert_gone(cap.capsule_id)


def test_minimal_template_boots(minimal_capsule):
    r = minimal_capsule.commands.run("bash -c 'echo $BASH_VERSION' && python3 -c 'print(6*7)'")
    assert r.exit_code == 0, r
    lines = r.stdout.split()
    assert lines[-1] == "42"
    assert minimal_capsule.get_info().template == MINIMAL


def test_many_capsules_are_independent(make_capsule):
    caps = [make_capsule(BUSYBOX, wait=False) for _ in range(4)]
    for i, cap in enumerate(caps):
        cap.wait_ready()
        cap.files.write("/tmp/who", str(i))
    for i, cap in enumerate(caps):
        assert cap.files.read("/tmp/who") == str(i)
    assert len({c.capsule_id for c in caps}) == 4


def test_snapshots_list_shows_base_templates(wrenn_client):
    templates = wrenn_client.snapshots.list()
    bases = [t for t in templates if t.type is not None and t.type.value == "base"]
    assert bases, f"no base templates in {templates}"
    names = {t.name for t in bases}
    assert {BUSYBOX, MINIMAL} <= names, names
    for t in bases:
        assert t.created_at is None or t.created_at.tzinfo is not None
    only_base = wrenn_client.snapshots.list(type="base")
    assert only_base and all(t.type.value == "base" for t in only_base)
    assert all(t.type.value == "snapshot" for t in wrenn_client.snapshots.list(type="snapshot"))


def _assert_gone(cid: str) -> None:
    def stopped_or_404():
        try:
            return Capsule.get_info(cid).status == Status.stopped
        except WrennNotFoundError:
            return True

    poll(stopped_or_404, timeout=30, what=f"{cid} stopped or 404")


# ── Wire-level shapes of the lifecycle (raw httpx; the SDK tolerates more) ─────────


def _rfc3339_aware(value: str) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def test_lifecycle_status_codes_and_shapes(api):
    r = api.post("/v1/capsules", json={"template": BUSYBOX})
    assert r.status_code == 202, r.text
    body = r.json()
    cid = body["id"]
    try:
        assert ID_RE.match(cid) and body["status"] == "starting", body
        for field in ("created_at", "last_updated"):
            assert _rfc3339_aware(body[field]), (field, body)
        assert all(v not in ("", None) for k, v in body.items() if k.endswith("_at")), body
        got = wait_status(api, cid, {"running"})
        assert _rfc3339_aware(got["started_at"])
        assert all(isinstance(v, str) for v in (got.get("metadata") or {}).values())

        assert api.post(f"/v1/capsules/{cid}/ping").status_code == 204
        r = api.post(f"/v1/capsules/{cid}/pause")
        assert r.status_code == 202 and r.json()["status"] == "pausing", r.text
        wait_status(api, cid, {"paused"})
        r = api.post(f"/v1/capsules/{cid}/resume")
        assert r.status_code == 202 and r.json()["status"] == "resuming", r.text
        wait_status(api, cid, {"running"})
    finally:
        r = api.delete(f"/v1/capsules/{cid}")
    assert r.status_code == 202 and r.content == b"", (r.status_code, r.text)
    got = wait_status(api, cid, {"stopped"})
    assert cid not in {c["id"] for c in api.get("/v1/capsules").json()}


def test_stats_usage_metrics(wrenn_client, capsule):
    stats = wrenn_client.capsules.stats()
    assert stats.range is not None and stats.range.value == "1h"
    assert stats.current.running_count >= 1
    assert wrenn_client.capsules.stats(range="24h").range.value == "24h"
    usage = wrenn_client.capsules.usage()
    assert usage.points is not None and usage.from_ <= usage.to
    m = wrenn_client.capsules.metrics(capsule.capsule_id)
    assert m.range.value == "10m" and m.sandbox_id == capsule.capsule_id
    capsule.pause(wait=True)
    wrenn_client.capsules.metrics(capsule.capsule_id, range="2h")  # paused → persisted samples
    from wrenn.exceptions import WrennValidationError

    with pytest.raises(WrennValidationError):
        wrenn_client.capsules.stats(range="7y")


# ── Snapshots (§9) ─────────────────────────────────────────────────────────────


def test_snapshot_create_boot_delete(wrenn_client, make_capsule):
    src = make_capsule(BUSYBOX)
    src.files.write("/root/snap.txt", "from the snapshot")
    name = "e2e-snap-" + src.capsule_id[-6:]
    tpl = src.create_snapshot(name=name)
    try:
        # Sync (201 Template) or async (202 Capsule snapshotting): wait for it to be listed.
        poll(lambda: name in {t.name for t in wrenn_client.snapshots.list(type="snapshot")},
             timeout=60, what=f"snapshot {name} listed")
        assert tpl is not None
        # The source capsule keeps working (returns to its previous state).
        poll(lambda: src.get_info().status == Status.running, timeout=30, what="source running")
        assert src.commands.run("echo ok").stdout == "ok\n"

        child = make_capsule(name)
        assert child.files.read("/root/snap.txt") == "from the snapshot"
        assert child.get_info().template == name

        from wrenn.exceptions import WrennConflictError

        with pytest.raises(WrennConflictError):
            src.create_snapshot(name=name)
        # Replacing/deleting a template may be refused (409) while a capsule still uses it
        # (§9.3); once the child is gone, overwrite must work.
        child.destroy(wait=True)
        src.files.write("/root/snap.txt", "second version")
        src.create_snapshot(name=name, overwrite=True)
        poll(lambda: src.get_info().status == Status.running, timeout=30, what="source running")
        child2 = make_capsule(name)
        assert child2.files.read("/root/snap.txt") == "second version"
        child2.destroy(wait=True)
    finally:
        with contextlib.suppress(WrennNotFoundError):
            wrenn_client.snapshots.delete(name)
    assert name not in {t.name for t in wrenn_client.snapshots.list()}


def test_snapshot_delete_errors(wrenn_client):
    from wrenn.exceptions import WrennForbiddenError

    with pytest.raises(WrennNotFoundError):
        wrenn_client.snapshots.delete("no-such-snapshot")
    with pytest.raises(WrennForbiddenError):
        wrenn_client.snapshots.delete(BUSYBOX)


# ── Inactivity TTL (§4.4) ──────────────────────────────────────────────────────


@pytest.mark.slow
def test_inactivity_ttl_auto_pauses(make_capsule, event_collector):
    events = event_collector()
    events.wait_for(lambda e: e.event.value == "connected", what="connected frame")
    cap = make_capsule(BUSYBOX, timeout=1)  # clamped to 60 s
    assert cap.get_info().timeout_sec == 60
    poll(lambda: cap.get_info().status == Status.paused, timeout=90, interval=1,
         what="auto-pause after 60 s of inactivity")
    ev = events.wait_for(
        lambda e: e.event.value == "capsule.pause" and e.resource is not None
        and e.resource.id == cap.capsule_id and e.actor is not None
        and e.actor.type is not None and e.actor.type.value == "system",
        timeout=10, what="system capsule.pause event",
    )
    assert (ev.metadata or {}).get("reason") == "ttl_expired", ev
    cap.resume(wait=True)
    assert cap.get_info().timeout_sec == 60  # resume preserves the TTL


def test_list_is_newest_first(make_capsule):
    a = make_capsule(BUSYBOX)
    b = make_capsule(BUSYBOX)
    order = [c.id for c in Capsule.list() if c.id in (a.capsule_id, b.capsule_id)]
    assert order == [b.capsule_id, a.capsule_id], order


def test_sdk_through_api_prefix(server):
    """§1.1: WRENN_BASE_URL may carry the `/api` prefix; REST, WS and SSE all work there."""
    base = server.base_url + "/api"
    cap = Capsule(template=BUSYBOX, wait=True, base_url=base)
    try:
        assert cap.commands.run("echo via-api").stdout == "via-api\n"
        cap.files.write("/tmp/p.txt", "p")
        assert cap.files.read("/tmp/p.txt") == "p"
        events = list(cap.commands.stream("echo streamed"))
        assert "".join(e.data for e in events if e.type == "stdout") == "streamed\n"
        assert events[-1].type == "exit"
        with cap.pty(cmd="/bin/sh") as term:
            from conftest import PtyReader

            r = PtyReader(term)
            r.wait_control("started")
            term.write(b"echo pty-$((2+3))\n")
            r.expect(rb"pty-5")
        assert base in cap.get_url(80) or cap.get_url(80).startswith("http://80-")
    finally:
        cap.destroy(wait=True)
        cap._client.close()
