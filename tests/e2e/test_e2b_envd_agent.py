"""E2B's stock `e2b` SDK against the agent's envd, without the server in between.

The agent (the suite's static binary) runs on a temp unix socket on the host; a loopback TCP
bridge stands where the server's sandbox proxy stands in production, and the SDK is pointed at
`http://127.0.0.1:PORT/envd` (the prefix the server adds). This pins envd's wire (Connect JSON
streams, errors, `/files`) to what the unmodified SDK sends and parses; the E2B end-to-end tests
through `wrenn serve` cover routing and tokens.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

e2b = pytest.importorskip("e2b")
from e2b import AsyncSandbox, ConnectionConfig, Sandbox  # noqa: E402
from e2b.exceptions import FileNotFoundException, TimeoutException  # noqa: E402
from e2b.sandbox.commands.command_handle import CommandExitException  # noqa: E402
from e2b.sandbox.filesystem.filesystem import WriteEntry  # noqa: E402
from e2b.sandbox_sync.commands.pty import PtySize  # noqa: E402
from packaging.version import Version  # noqa: E402

from conftest import free_port, poll  # noqa: E402

ENVD_VERSION = "0.6.1"


class Bridge:
    """127.0.0.1:port → unix socket, one thread running an asyncio loop."""

    def __init__(self, sock: Path) -> None:
        self.sock = str(sock)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "bridge did not start"

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_unix_connection(self.sock)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        srv = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()
        srv.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def envd(server) -> Iterator[tuple[dict, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="wrenn-envd-"))
    sock = tmp / "agent.sock"
    proc = subprocess.Popen(
        [str(server.agent), "--socket", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "agent.log", "wb"),
        env={"WRENN_AGENT_LOG": "warn", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    bridge = None
    try:
        poll(sock.exists, timeout=15, interval=0.05, what="agent socket")
        bridge = Bridge(sock)
        cfg = ConnectionConfig(sandbox_url=f"http://127.0.0.1:{bridge.port}/envd", api_key="e2b_00")
        opts = dict(
            sandbox_id="sbx-envd",
            sandbox_domain=None,
            envd_version=Version(ENVD_VERSION),
            envd_access_token="token",
            traffic_access_token=None,
            connection_config=cfg,
        )
        root = tmp / "files"
        root.mkdir()
        yield opts, root
    finally:
        if bridge is not None:
            bridge.stop()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def test_commands(envd) -> None:
    opts, _ = envd
    sbx = Sandbox(**opts)
    assert sbx.is_running()
    r = sbx.commands.run("echo hi; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 0)
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("exit 7")
    assert exc.value.exit_code == 7
    r = sbx.commands.run("echo $A $E2B_SANDBOX; pwd", envs={"A": "x"}, cwd="/tmp")
    assert r.stdout == "x true\n/tmp\n"
    chunks: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done", on_stdout=chunks.append)
    assert "".join(chunks) == "1\n2\n3\n"

    h = sbx.commands.run("sleep 30", background=True)
    assert any(p.pid == h.pid for p in sbx.commands.list())
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as exc:
        h.wait()
    assert exc.value.exit_code == -1 and "killed" in (exc.value.error or "")
    assert sbx.commands.kill(h.pid) is False

    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "hello\n"

    h = sbx.commands.run("echo $((1+1)); sleep 30", background=True)
    h.disconnect()
    h2 = sbx.commands.connect(h.pid)
    h2.kill()
    with pytest.raises(CommandExitException):
        h2.wait()
    t0 = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 10", timeout=1)
    assert time.monotonic() - t0 < 5


def test_pty(envd) -> None:
    opts, _ = envd
    sbx = Sandbox(**opts)
    out = bytearray()
    p = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(p.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(p.pid, b"stty size; exit 3\n")
    with pytest.raises(CommandExitException) as exc:
        p.wait(on_pty=out.extend)
    assert exc.value.exit_code == 3
    assert b"30 100" in out
    p = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(p.pid) is True


def test_files(envd) -> None:
    opts, root = envd
    sbx = Sandbox(**opts)
    big = os.urandom(5 * 1024 * 1024)
    info = sbx.files.write(f"{root}/dir/big.bin", big)
    assert info.path == f"{root}/dir/big.bin"
    assert sbx.files.read(f"{root}/dir/big.bin", format="bytes") == big
    sbx.files.write(f"{root}/dir/t.txt", "text")
    assert sbx.files.read(f"{root}/dir/t.txt") == "text"
    sbx.files.write(f"{root}/dir/stream.bin", io.BytesIO(big[:100_000]))
    assert sbx.files.read(f"{root}/dir/stream.bin", format="bytes") == big[:100_000]
    sbx.files.write(f"{root}/dir/gz.txt", "gzipped", gzip=True)
    assert sbx.files.read(f"{root}/dir/gz.txt") == "gzipped"

    infos = sbx.files.write_files(
        [WriteEntry(path=f"{root}/w/a.txt", data="a"), WriteEntry(path=f"{root}/w/b/c.txt", data="c")]
    )
    assert len(infos) == 2
    paths = sorted(e.path for e in sbx.files.list(f"{root}/w", depth=2))
    assert paths == [f"{root}/w/a.txt", f"{root}/w/b", f"{root}/w/b/c.txt"]
    assert sbx.files.exists(f"{root}/w/a.txt") and not sbx.files.exists(f"{root}/nope")
    assert sbx.files.make_dir(f"{root}/md/x") is True
    assert sbx.files.make_dir(f"{root}/md/x") is False
    assert sbx.files.rename(f"{root}/w/a.txt", f"{root}/w/z.txt").path == f"{root}/w/z.txt"
    i = sbx.files.get_info(f"{root}/w/z.txt")
    assert (i.size, i.type.value, i.permissions[0]) == (1, "file", "-")
    sbx.files.remove(f"{root}/w")
    assert not sbx.files.exists(f"{root}/w")
    with pytest.raises(FileNotFoundException):
        sbx.files.read(f"{root}/missing")

    w = sbx.files.watch_dir(f"{root}/md", recursive=True)
    sbx.files.write(f"{root}/md/x/new.txt", "n")
    names: list[str] = []

    def seen() -> bool:
        names.extend(e.name for e in w.get_new_events())
        return "x/new.txt" in names

    poll(seen, timeout=10, interval=0.1, what="watch event")
    w.stop()


def test_async(envd) -> None:
    opts, root = envd

    async def main() -> None:
        a = AsyncSandbox(**opts)
        r = await a.commands.run("echo async")
        assert r.stdout == "async\n"
        (root / "aw").mkdir()
        got: list = []
        h = await a.files.watch_dir(str(root / "aw"), on_event=got.append)
        await a.files.write(f"{root}/aw/f.txt", "x")
        for _ in range(100):
            if any(e.name == "f.txt" for e in got):
                break
            await asyncio.sleep(0.1)
        assert any(e.name == "f.txt" for e in got), got
        await h.stop()

    asyncio.run(main())
