"""`WrennClient.events.stream()` (SSE, §10)."""

from __future__ import annotations

import pytest
from wrenn import WrennClient
from wrenn.exceptions import WrennAuthenticationError

from conftest import BUSYBOX, wait_status

ACTIONS = ["capsule.create", "capsule.pause", "capsule.resume", "capsule.destroy"]


def _is(kind: str, cid: str, outcome: str | None = "success"):
    def pred(ev) -> bool:
        return (
            ev.event is not None
            and ev.event.value == kind
            and ev.resource is not None
            and ev.resource.id == cid
            and (outcome is None or (ev.outcome is not None and ev.outcome.value == outcome))
        )

    return pred


def test_lifecycle_events(event_collector, make_capsule):
    events = event_collector()
    events.wait_for(lambda e: e.event.value == "connected", what="connected frame")

    cap = make_capsule(BUSYBOX)
    cid = cap.capsule_id
    cap.pause(wait=True)
    cap.resume(wait=True)
    cap.destroy(wait=True)

    found = {}
    for kind in ACTIONS:
        found[kind] = events.wait_for(_is(kind, cid), timeout=30, what=f"{kind} success for {cid}")

    positions = [events.events.index(found[k]) for k in ACTIONS]
    assert positions == sorted(positions), f"out of order: {events.summary()}"

    for kind, ev in found.items():
        assert ev.timestamp is not None and ev.timestamp.tzinfo is not None, ev
        assert ev.resource.type == "sandbox", ev
        assert ev.actor is not None and ev.actor.type is not None, ev
        if ev.sandbox is not None:
            assert ev.sandbox.id == cid
    # The completion of pause carries the paused capsule, resume the running one.
    assert found["capsule.create"].sandbox is None or found["capsule.create"].sandbox.status.value in (
        "starting", "running")
    # No action event for this capsule failed.
    failed = [e for e in events.events if e.resource and e.resource.id == cid
              and e.outcome is not None and e.outcome.value == "error"]
    assert not failed, failed


def test_events_are_team_scoped(event_collector, make_capsule, server):
    beta = event_collector(server.key_beta)
    beta.wait_for(lambda e: e.event.value == "connected", what="beta connected")

    alpha_cap = make_capsule(BUSYBOX)
    alpha_cap.destroy(wait=True)

    # A capsule of beta's own: once beta has seen its create, any alpha event would have
    # arrived before it.
    from wrenn import Capsule

    beta_cap = Capsule(template=BUSYBOX, api_key=server.key_beta)
    try:
        beta.wait_for(_is("capsule.create", beta_cap.capsule_id, None), what="beta's own create")
    finally:
        Capsule.destroy(beta_cap.capsule_id, wait=True, api_key=server.key_beta)
        beta_cap._client.close()
    leaked = [e for e in beta.events if e.resource and e.resource.id == alpha_cap.capsule_id]
    assert not leaked, f"team beta saw team alpha's events: {leaked}"


def test_events_bad_key(server):
    with WrennClient(api_key="wrn_bad") as c, pytest.raises(WrennAuthenticationError):
        next(iter(c.events.stream()))


def test_failed_create_emits_no_success(event_collector, api):
    """An unknown template is rejected synchronously; nothing may claim success."""
    events = event_collector()
    events.wait_for(lambda e: e.event.value == "connected", what="connected frame")
    r = api.post("/v1/capsules", json={"template": "no-such-template"})
    assert r.status_code == 404
    # A later, valid create proves the stream is live and ordered.
    r = api.post("/v1/capsules", json={"template": BUSYBOX})
    cid = r.json()["id"]
    try:
        events.wait_for(_is("capsule.create", cid, None), what="create event")
        creates = [e for e in events.events if e.event.value == "capsule.create"]
        assert all(e.resource and e.resource.id == cid for e in creates), events.summary()
    finally:
        api.delete(f"/v1/capsules/{cid}")
        wait_status(api, cid, {"stopped"})


def test_sse_wire_format(server):
    """§10: headers, first frame `event: connected`, JSON data on one line."""
    import httpx

    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.key_alpha},
                      timeout=httpx.Timeout(15.0)) as c:
        with c.stream("GET", "/v1/events/stream") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers.get("cache-control") == "no-cache"
            lines = []
            for line in resp.iter_lines():
                lines.append(line)
                if line == "" and any(x.startswith("data:") for x in lines):
                    break
    assert "event: connected" in lines, lines
    import json as _json

    data = _json.loads(next(x for x in lines if x.startswith("data:"))[5:])
    assert data["event"] == "connected" and data["timestamp"], data
