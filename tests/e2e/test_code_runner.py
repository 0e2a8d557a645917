"""The official SDK's code runner (`wrenn.code_runner`, contract §12) against `code-runner-beta`.

The SDK reaches Jupyter through the port proxy at `http://8888-{id}.localhost:{port}`, so the
capsules here are made with `base_url=http://localhost:{port}` (`*.localhost` resolves to
loopback through nss-myhostname, see scripts/deps.sh). The template is built into the session's
data dir from the cache (`$WRENN_CACHE/templates/code-runner-beta`, ~2 min once when missing).
The session server runs with the default warm pool of one `code-runner-beta` capsule.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import re
import socket
import time

import httpx
import pytest
from wrenn.code_runner import AsyncCapsule, Capsule

from conftest import poll

TEMPLATE = "code-runner-beta"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _localhost_resolves() -> bool:
    try:
        socket.getaddrinfo("8888-cl-x.localhost", 80)
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _localhost_resolves(),
    reason="*.localhost does not resolve: run scripts/deps.sh (nss-myhostname)",
)


def _base_url(server) -> str:
    return f"http://localhost:{server.port}"


@pytest.fixture(scope="module")
def runner(server):
    """One code-runner capsule for the module (the first create may build the template)."""
    cap = Capsule(base_url=_base_url(server), api_key=server.key_alpha)
    try:
        cap.wait_ready(timeout=600)
        yield cap
    finally:
        cap.destroy()


def test_state_persists_across_cells_and_streams_reach_callbacks(runner):
    out: list[str] = []
    err: list[str] = []
    r = runner.run_code("x = 41\nimport sys\nprint('to stderr', file=sys.stderr)")
    assert r.error is None, r.error
    r = runner.run_code(
        "print('x is', x + 1)\nimport sys; sys.stderr.write('warn\\n')\nx + 1",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert r.error is None, r.error
    assert r.text == "42"
    assert "".join(r.logs.stdout) == "x is 42\n"
    assert "".join(out) == "x is 42\n"
    assert "".join(err) == "warn\n"
    assert r.execution_count is not None and r.execution_count >= 2


def test_png_chart(runner):
    seen = []
    r = runner.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.title('wrenn')\n"
        "plt.show()",
        on_result=seen.append,
    )
    assert r.error is None, r.error
    pngs = [x.png for x in r.results if x.png]
    assert len(pngs) == 1, r.results
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    assert any(x.png for x in seen), "on_result got the chart"


def test_dataframe_html(runner):
    r = runner.run_code(
        "import pandas as pd, numpy as np, seaborn, scipy, requests\n"
        "df = pd.DataFrame({'a': np.arange(3), 'b': ['x', 'y', 'z']})\n"
        "df"
    )
    assert r.error is None, r.error
    main = [x for x in r.results if x.is_main_result]
    assert len(main) == 1
    assert main[0].html and "<table" in main[0].html and "<td>y</td>" in main[0].html
    assert "a  b" in (main[0].text or "")


def test_error_has_name_value_and_traceback(runner):
    errors = []
    r = runner.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert r.error is not None
    assert r.error.name == "ZeroDivisionError"
    assert "division by zero" in r.error.value
    assert "f()" in r.error.traceback
    assert errors and errors[0].name == "ZeroDivisionError"
    # The kernel is still fine.
    assert runner.run_code("1 + 1").text == "2"


def test_cell_timeout_leaves_kernel_usable(runner):
    # SDK 0.3.0's sync client expects TimeoutError from httpx-ws, whose sync session raises
    # queue.Empty instead (httpx-ws 0.9.0); the async client gets it right (tested below).
    try:
        r = runner.run_code("import time\ntime.sleep(4)\n'late'", timeout=1)
        assert r.timed_out
        assert r.error is not None and r.error.name == "Timeout"
    except queue.Empty:
        runner._close_ws()
    # The next cell runs once the slow one is done, on the same kernel and state.
    r = runner.run_code("x", timeout=30)
    assert r.error is None, r.error
    assert r.text == "41"


def test_pause_resume_keeps_kernel_state(runner):
    runner.run_code("kept = {'n': 7}")
    runner.pause(wait=True)
    runner.resume(wait=True)
    r = runner.run_code("kept['n'] * 6")
    assert r.error is None, r.error
    assert r.text == "42"


def _warm_ready(server) -> bool:
    return "warm capsule ready" in server.log_path.read_text(errors="replace")


def _log_count(server, needle: str) -> int:
    return server.log_path.read_text(errors="replace").count(needle)


def test_pooled_create_answers_first_cell(server, runner):
    """With the template built (by the module's first capsule), the pool fills; a create is
    then handed a pooled capsule, running at once with a kernel that already ran nothing."""
    poll(lambda: _warm_ready(server), timeout=180, interval=1, what="a warm capsule")
    handed = _log_count(server, "handed out from the warm pool")
    t0 = time.monotonic()
    cap = Capsule(base_url=_base_url(server), api_key=server.key_alpha)
    try:
        info = cap.info
        assert info is not None and info.status.value == "running", info
        assert (info.metadata or {}).get("warm_pool") == "true", info.metadata
        assert _log_count(server, "handed out from the warm pool") == handed + 1
        r = cap.run_code("import numpy as np\nint(np.arange(4).sum())")
        first = time.monotonic() - t0
        assert r.error is None, r.error
        assert r.text == "6"
        # It never served anyone: a fresh namespace and execution count 1.
        r = cap.run_code("'x' in dir()")
        assert r.text == "False"
        print(f"pooled create → first cell: {first * 1000:.0f} ms")
        # The capsule is the caller's: listed for its team, not for another.
        with httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.key_beta}) as c:
            assert c.get(f"/v1/capsules/{cap.capsule_id}").status_code == 404
    finally:
        cap.destroy()
    # The pool refills in the background.
    poll(
        lambda: _log_count(server, "warm capsule ready") >= 2,
        timeout=180,
        interval=1,
        what="the pool refilled",
    )


def test_async_code_runner(server, runner):
    async def main() -> None:
        cap = await AsyncCapsule.create(base_url=_base_url(server), api_key=server.key_alpha)
        try:
            await cap.wait_ready(timeout=120)
            out: list[str] = []
            r = await cap.run_code("y = 20\nprint('hi')", on_stdout=out.append)
            assert r.error is None, r.error
            assert "".join(out) == "hi\n"
            r = await cap.run_code(
                "import matplotlib.pyplot as plt\nplt.bar([1, 2], [y, y + 1])\nplt.show()\ny + 22"
            )
            assert r.error is None, r.error
            assert r.text == "42"
            assert any(x.png for x in r.results)
            r = await cap.run_code("raise ValueError('bad')")
            assert r.error is not None and r.error.name == "ValueError"
            assert r.error.value == "bad"
            r = await cap.run_code("import time\ntime.sleep(3)", timeout=1)
            assert r.timed_out and r.error is not None and r.error.name == "Timeout"
            r = await cap.run_code("y * 2", timeout=30)
            assert r.error is None and r.text == "40", (r.error, r.text)
        finally:
            await cap.close()
            await cap.destroy()

    asyncio.run(main())


def _pooled_now(server) -> list[str]:
    """Ids of warm capsules made and not handed out, from the server log."""
    made, handed = [], set()
    for line in server.log_path.read_text(errors="replace").splitlines():
        m = re.search(r"(cl-[0-9a-z]{25})", line)
        if not m:
            continue
        if "warm capsule ready" in line:
            made.append(m.group(1))
        elif "handed out from the warm pool" in line:
            handed.add(m.group(1))
    return [i for i in made if i not in handed]


def test_pooled_capsules_do_not_outlive_the_server(server, runner, restart_server):
    """Graceful stop destroys pooled capsules; after a crash, recovery removes them."""
    capsules = server.capsules_dir

    def live_pooled():
        return [i for i in _pooled_now(server) if (capsules / i).exists()]

    pooled = poll(live_pooled, timeout=180, interval=1, what="a pooled capsule")
    restart_server(kill=False)
    for cid in pooled:
        assert not (capsules / cid).exists(), f"pooled {cid} survived a graceful stop"
    # The pool refills after the restart; a crash then leaves it to recovery.
    fresh = poll(
        lambda: [i for i in live_pooled() if i not in pooled],
        timeout=180,
        interval=1,
        what="the pool refilled after restart",
    )
    restart_server(kill=True)
    poll(
        lambda: not any((capsules / i).exists() for i in fresh),
        timeout=60,
        interval=0.5,
        what="recovery removed the crashed server's pooled capsules",
    )
    # The team's capsule lived through both restarts.
    assert runner.get_info().status.value == "running"
