"""E2B's stock `e2b` SDK (2.63.0) against `wrenn serve`, unmodified, in mode A:
E2B_API_URL = E2B_SANDBOX_URL = the server's own listener, an `e2b_` key from
`wrenn key create --e2b`. Control plane (create, list and its paging, info, timeout, kill,
pause/connect, metrics), sandbox traffic (routing headers and hosts, envd token, 502 shapes),
sync and async.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid

import httpx
import pytest

from conftest import poll

e2b = pytest.importorskip("e2b")
from e2b import AsyncSandbox, Sandbox, SandboxQuery  # noqa: E402
from e2b.exceptions import AuthenticationException, NotFoundException  # noqa: E402

SBX_RE = re.compile(r"^[0-9a-z]{25}$")
TEMPLATE = "base"
ENVD_PORT = 49983


@pytest.fixture(scope="module")
def e2b_key(server) -> str:
    out = subprocess.run(
        [str(server.bin), "key", "create", "--e2b", "--team", "alpha", "--dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key), key
    return key


@pytest.fixture(scope="module", autouse=True)
def e2b_env(server, e2b_key):
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    os.environ["E2B_API_URL"] = server.base_url
    os.environ["E2B_SANDBOX_URL"] = server.base_url
    os.environ["E2B_API_KEY"] = e2b_key
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def sbx():
    s = Sandbox.create(template=TEMPLATE, timeout=120)
    yield s
    s.kill()


def envd(server, sid: str, token: str | None = None, port: int = ENVD_PORT) -> httpx.Client:
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port)}
    if token is not None:
        headers["X-Access-Token"] = token
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def test_create_info_kill_twice(server, e2b_key):
    s = Sandbox.create(
        template=TEMPLATE, timeout=120, metadata={"owner": "alice"}, envs={"MODE": "e2e"}
    )
    try:
        assert SBX_RE.match(s.sandbox_id), s.sandbox_id
        info = s.get_info()
        assert info.sandbox_id == s.sandbox_id
        assert info.template_id == TEMPLATE
        assert info.state.value == "running"
        assert info.metadata == {"owner": "alice"}
        assert info.end_at.tzinfo is not None
        assert 100 <= (info.end_at - info.started_at).total_seconds() <= 140
        assert s.is_running()
        # The control plane and the Wrenn API see the same capsule.
        with server.client(e2b_key) as c:
            r = c.get(f"/v1/capsules/cl-{s.sandbox_id}")
            assert r.status_code == 200 and r.json()["template"] == TEMPLATE
    finally:
        assert s.kill() is True
    assert Sandbox.kill(s.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(s.sandbox_id)
    assert s.is_running() is False


def test_commands_see_envs_user_and_home(sbx):
    r = sbx.commands.run('echo "$MODE|$(whoami)|$(pwd)"', envs={"MODE": "x"})
    assert r.exit_code == 0
    assert r.stdout.strip() == "x|user|/home/user"
    sbx.files.write("hello.txt", "hi there")
    assert sbx.files.read("/home/user/hello.txt") == "hi there"


def test_envs_from_create_reach_commands():
    s = Sandbox.create(template=TEMPLATE, timeout=60, envs={"FROM_CREATE": "yes"})
    try:
        assert s.commands.run("echo $FROM_CREATE").stdout.strip() == "yes"
    finally:
        s.kill()


def test_list_pages_and_metadata_filter():
    tag = uuid.uuid4().hex[:12]
    made = [
        Sandbox.create(template=TEMPLATE, timeout=120, metadata={"tag": tag, "n": str(i)})
        for i in range(3)
    ]
    try:
        pager = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2)
        first = pager.next_items()
        assert len(first) == 2 and pager.has_next
        second = pager.next_items()
        assert len(second) == 1 and not pager.has_next
        ids = [i.sandbox_id for i in first + second]
        assert sorted(ids) == sorted(s.sandbox_id for s in made)
        # Newest first by default.
        assert ids == [s.sandbox_id for s in reversed(made)]
        one = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "n": "1"})).next_items()
        assert [i.sandbox_id for i in one] == [made[1].sandbox_id]
        none = Sandbox.list(query=SandboxQuery(metadata={"tag": "nope-" + tag})).next_items()
        assert none == []
    finally:
        for s in made:
            s.kill()


def test_set_timeout_moves_end_and_expiry_kills(sbx):
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    assert (sbx.get_info().end_at - before).total_seconds() > 400
    sbx.set_timeout(3)
    poll(lambda: not sbx.is_running(), timeout=20, interval=0.5, what="timed-out sandbox gone")
    with pytest.raises(NotFoundException):
        sbx.get_info()


def test_pause_then_connect_keeps_files_processes_and_token(server):
    s = Sandbox.create(template=TEMPLATE, timeout=120)
    try:
        s.files.write("/home/user/kept.txt", "still here")
        bg = s.commands.run("sleep 600", background=True)
        token = s._envd_access_token
        assert s.pause() is True
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        assert s.is_running() is False
        assert Sandbox.pause(s.sandbox_id) is False  # 409: already paused
        with envd(server, s.sandbox_id, token) as c:
            r = c.get("/health")
            assert r.status_code == 502 and "was not found" in r.json()["message"]
        again = Sandbox.connect(s.sandbox_id)
        assert again.sandbox_id == s.sandbox_id
        assert again._envd_access_token == token
        assert again.get_info().state.value == "running"
        assert again.files.read("/home/user/kept.txt") == "still here"
        assert bg.pid in [p.pid for p in again.commands.list()]
        # Connecting to a running sandbox answers it as is.
        assert Sandbox.connect(s.sandbox_id).sandbox_id == s.sandbox_id
    finally:
        s.kill()


def test_metrics_have_every_key(sbx):
    m = poll(lambda: sbx.get_metrics(), timeout=15, interval=1, what="a metrics sample")
    x = m[-1]
    assert x.cpu_count >= 1 and 0 <= x.cpu_used_pct <= 100
    assert x.mem_total > 0 and x.mem_used > 0
    assert x.timestamp.tzinfo is not None


def test_wrong_api_key_is_401(server):
    with pytest.raises(AuthenticationException):
        Sandbox.create(template=TEMPLATE, api_key="e2b_" + "0" * 40)
    r = httpx.get(f"{server.base_url}/v2/sandboxes", headers={"X-API-KEY": "e2b_nope"})
    assert r.status_code == 401
    assert r.json()["code"] == 401 and r.json()["message"]


def test_envd_token_is_checked_but_not_for_health(server, sbx):
    sid, token = sbx.sandbox_id, sbx._envd_access_token
    with envd(server, sid) as c:
        assert c.get("/health").status_code // 100 == 2
        r = c.post("/filesystem.Filesystem/Stat", json={"path": "/"})
        assert r.status_code == 401 and r.json()["code"] == 401
        r = c.get("/files", params={"path": "/etc/hostname"})
        assert r.status_code == 401
    with envd(server, sid, "wrong") as c:
        assert c.post("/process.Process/List", json={}).status_code == 401
    with envd(server, sid, token) as c:
        r = c.post("/process.Process/List", json={})
        assert r.status_code == 200, r.text
        assert "processes" in r.json() or r.json() == {}
    # A signed download URL needs no token.
    url = sbx.download_url("/etc/hostname", use_signature_expiration=60)
    routing = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(ENVD_PORT)}
    r = httpx.get(url, headers=routing)
    assert r.status_code == 200, r.text
    assert r.text == sbx.files.read("/etc/hostname")
    # A signed upload URL, and a signature that does not fit (a read one used to write).
    up = sbx.upload_url("/home/user/up.txt", use_signature_expiration=60)
    r = httpx.post(up, headers=routing, files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sbx.files.read("/home/user/up.txt") == "uploaded"
    r = httpx.post(url, headers=routing, files={"file": ("x", b"x")})
    assert r.status_code == 401
    expired = sbx.download_url("/etc/hostname", use_signature_expiration=-10)
    assert httpx.get(expired, headers=routing).status_code == 401


def test_host_routing_reaches_envd(server, sbx):
    host = f"{ENVD_PORT}-{sbx.sandbox_id}.localhost"
    r = httpx.get(f"{server.base_url}/health", headers={"Host": host})
    assert r.status_code // 100 == 2, r.text
    # The Wrenn API's own health stays where it was.
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"


def test_sandbox_traffic_error_shapes(server, sbx):
    dead = "0" * 24 + "1"
    with envd(server, dead) as c:
        r = c.get("/health")
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    assert "was not found" in r.json()["message"] and r.json()["code"] == 502
    with envd(server, sbx.sandbox_id, port=12345) as c:
        r = c.get("/")
    assert r.status_code == 502 and "port is not open" in r.json()["message"]
    r = httpx.get(f"{server.base_url}/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id})
    assert r.status_code == 400 and r.json()["code"] == 400


def test_control_plane_error_shapes(server, e2b_key):
    with httpx.Client(base_url=server.base_url, headers={"X-API-KEY": e2b_key}) as c:
        r = c.get("/sandboxes/" + "0" * 25)
        assert r.status_code == 404 and r.json() == {
            "code": 404,
            "message": f"sandbox {'0' * 25} not found",
        }
        r = c.post("/v2/sandboxes", json={"templateID": "no-such-template"})
        assert r.status_code == 404 and r.json()["code"] == 404
        r = c.post("/v2/sandboxes", content=b"{not json")
        assert r.status_code == 400 and r.json()["code"] == 400
        r = c.get("/v2/sandboxes", params={"limit": 0})
        assert r.status_code == 400
        r = c.post("/sandboxes/" + "0" * 25 + "/fork", json={})
        assert r.status_code == 501 and r.json()["code"] == 501


def test_async_sdk_create_run_kill():
    async def run() -> None:
        s = await AsyncSandbox.create(template=TEMPLATE, timeout=60)
        try:
            r = await s.commands.run("echo async")
            assert r.stdout.strip() == "async"
            assert await s.is_running()
            info = await s.get_info()
            assert info.sandbox_id == s.sandbox_id
        finally:
            assert await s.kill() is True
        assert await AsyncSandbox.kill(s.sandbox_id) is False

    asyncio.run(run())
