"""Admission (issue 8): a capsule must fit the host; a team stays within its limits (402 with
upstream's quota codes); nothing is created for a refused request."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import BUSYBOX, WrennServer, assert_error, capsule_ids, wait_status


def host_mem_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal")


def test_a_capsule_larger_than_the_host_is_refused(api):
    before = capsule_ids(api)
    r = api.post("/v1/capsules", json={"template": BUSYBOX, "vcpus": os.cpu_count() + 1})
    err = assert_error(r, 400, "invalid_request")
    assert "cores" in err["message"]
    r = api.post("/v1/capsules", json={"template": BUSYBOX, "memory_mb": host_mem_mb() + 1})
    assert_error(r, 400, "invalid_request")
    assert capsule_ids(api) == before


@pytest.fixture
def limited_server():
    srv = WrennServer(
        ["--team-max-capsules", "1", "--team-max-snapshots", "1", "--no-prebuild"]
    )
    try:
        srv.start()
        yield srv
    finally:
        try:
            srv.destroy_all()
        finally:
            srv.stop()
            shutil.rmtree(srv.data_dir, ignore_errors=True)


def test_team_limits_answer_402_and_leave_other_teams_alone(limited_server):
    srv = limited_server
    with srv.client(srv.key_alpha) as alpha, srv.client(srv.key_beta) as beta:
        r = alpha.post("/v1/capsules", json={"template": BUSYBOX})
        assert r.status_code == 202, r.text
        first = r.json()["id"]
        wait_status(alpha, first, {"running"}, timeout=60)
        r = alpha.post("/v1/capsules", json={"template": BUSYBOX})
        assert_error(r, 402, "concurrent_sandbox_limit")
        assert capsule_ids(alpha) == {first}
        # Another team has its own allowance.
        r = beta.post("/v1/capsules", json={"template": BUSYBOX})
        assert r.status_code == 202, r.text
        # Snapshots: one kept, the second refused before anything is copied.
        r = alpha.post("/v1/snapshots", json={"sandbox_id": first, "name": "one"})
        assert r.status_code in (201, 202), r.text
        wait_status(alpha, first, {"running"}, timeout=60)
        r = alpha.post("/v1/snapshots", json={"sandbox_id": first, "name": "two"})
        assert_error(r, 402, "snapshot_limit")
        # A destroyed capsule frees its place.
        alpha.delete(f"/v1/capsules/{first}")
        wait_status(alpha, first, {"stopped"}, timeout=60)
        r = alpha.post("/v1/capsules", json={"template": BUSYBOX})
        assert r.status_code == 202, r.text


@pytest.fixture
def vcpu_limited_server():
    srv = WrennServer(["--team-max-vcpus", "4", "--no-prebuild"])
    try:
        srv.start()
        yield srv
    finally:
        try:
            srv.destroy_all()
        finally:
            srv.stop()
            shutil.rmtree(srv.data_dir, ignore_errors=True)


def test_concurrent_creates_never_exceed_a_team_limit(vcpu_limited_server):
    """Issue 14: rounds of 32 creates at once against a team limit of 4 vCPUs each admit
    exactly 4 capsules (admission and reservation are one step); the others answer 402
    `vcpu_limit`. A race that lets one more through shows in some round."""
    srv = vcpu_limited_server
    n = 32

    def create(start: threading.Barrier) -> httpx.Response:
        with srv.client(srv.key_alpha) as c:
            start.wait()
            return c.post("/v1/capsules", json={"template": BUSYBOX, "vcpus": 1, "memory_mb": 64})

    with srv.client(srv.key_alpha) as alpha, ThreadPoolExecutor(max_workers=n) as pool:
        for _ in range(4):
            start = threading.Barrier(n)
            answers = list(pool.map(lambda _: create(start), range(n)))
            accepted = [r.json()["id"] for r in answers if r.status_code == 202]
            assert len(accepted) == 4, [(r.status_code, r.text) for r in answers]
            for r in answers:
                if r.status_code != 202:
                    assert_error(r, 402, "vcpu_limit")
            assert capsule_ids(alpha) == set(accepted)
            for id_ in accepted:
                wait_status(alpha, id_, {"running"}, timeout=120)
            # Still at the limit once they run; destroys free the places.
            r = alpha.post("/v1/capsules", json={"template": BUSYBOX, "memory_mb": 64})
            assert_error(r, 402, "vcpu_limit")
            for id_ in accepted:
                assert alpha.delete(f"/v1/capsules/{id_}").status_code in (202, 204)
            for id_ in accepted:
                wait_status(alpha, id_, {"stopped"}, timeout=60)
