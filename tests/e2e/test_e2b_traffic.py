"""E2B's stock SDK through wrenn's sandbox traffic path: output streamed live (no buffering in
the proxy), large uploads streamed (the server's memory stays flat), snapshots as templates,
and sandboxes that survive a server restart with the same token.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from conftest import rss_bytes

e2b = pytest.importorskip("e2b")
from e2b import Sandbox  # noqa: E402

TEMPLATE = "base"


@pytest.fixture(scope="module", autouse=True)
def e2b_env(server):
    out = subprocess.run(
        [str(server.bin), "key", "create", "--e2b", "--team", "alpha", "--dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")}
    os.environ["E2B_API_URL"] = server.base_url
    os.environ["E2B_SANDBOX_URL"] = server.base_url
    os.environ["E2B_API_KEY"] = out.stdout.strip()
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def sbx():
    s = Sandbox.create(template=TEMPLATE, timeout=300)
    yield s
    Sandbox.kill(s.sandbox_id)


def test_output_arrives_while_the_command_runs(sbx):
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    r = sbx.commands.run(
        "for i in 1 2 3; do echo line$i; sleep 1; done",
        on_stdout=lambda line: seen.append((time.monotonic() - start, line)),
    )
    total = time.monotonic() - start
    assert r.exit_code == 0
    assert [line.strip() for _, line in seen] == ["line1", "line2", "line3"]
    # The first line must reach the callback long before the command ends.
    assert seen[0][0] < total - 1.5, (seen, total)


def test_large_upload_streams_and_round_trips(server, sbx):
    size = 96 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    for _ in range(size // len(chunk)):
        digest.update(chunk)

    def body():
        for _ in range(size // len(chunk)):
            yield chunk

    before = rss_bytes(server.pid)
    sbx.files.write("/home/user/big.bin", body())
    grew = rss_bytes(server.pid) - before
    r = sbx.commands.run("sha256sum /home/user/big.bin && stat -c %s /home/user/big.bin")
    got_sum, got_size = r.stdout.split()[0], int(r.stdout.split()[-1])
    assert (got_sum, got_size) == (digest.hexdigest(), size)
    assert grew < 48 * 1024 * 1024, f"server RSS grew by {grew >> 20} MiB for a {size >> 20} MiB upload"
    # 5 MiB of random bytes back through GET /files.
    data = os.urandom(5 * 1024 * 1024)
    sbx.files.write("/home/user/five.bin", data)
    assert sbx.files.read("/home/user/five.bin", format="bytes") == data


def test_snapshot_is_a_template(sbx):
    sbx.files.write("/home/user/marker.txt", "from the snapshot")
    snap = sbx.create_snapshot()
    try:
        assert snap.snapshot_id
        listed = [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()]
        assert snap.snapshot_id in listed
        child = Sandbox.create(template=snap.snapshot_id, timeout=60)
        try:
            assert child.files.read("/home/user/marker.txt") == "from the snapshot"
        finally:
            child.kill()
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False


def test_sandbox_and_token_survive_a_server_restart(sbx, restart_server):
    sbx.files.write("/home/user/a.txt", "before")
    end_before = sbx.get_info().end_at
    restart_server()
    assert sbx.is_running()
    assert sbx.files.read("/home/user/a.txt") == "before"
    info = Sandbox.get_info(sbx.sandbox_id)
    assert info.end_at == end_before
    again = Sandbox.connect(sbx.sandbox_id)
    assert again._envd_access_token == sbx._envd_access_token
    assert again.commands.run("whoami").stdout.strip() == "user"
