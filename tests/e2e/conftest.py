"""End-to-end fixtures: start the real `wrenn` server, drive it with the official SDK.

Environment:
  WRENN_BIN    server binary      (default target/debug/wrenn)
  WRENN_AGENT  static agent       (default target/x86_64-unknown-linux-gnu/release/wrenn-agent)
  WRENN_CACHE  template cache     (default /var/cache/wrenn)
  WRENN_E2E_LOG_DIR  if set, each server log is copied there when the session ends

The session fixture creates a fresh data dir, two API keys (teams `alpha` and `beta`), starts
`wrenn serve` on a free 127.0.0.1 port, exports WRENN_BASE_URL / WRENN_API_KEY for the SDK, and
waits until the `minimal` template is usable. Teardown destroys every capsule left, stops the
server and removes the data dir only when nothing is mounted under it any more.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ID_RE = re.compile(r"^cl-[0-9a-z]{25}$")
# Well-formed but (with overwhelming probability) unknown capsule id.
UNKNOWN_ID = "cl-" + "0" * 24 + "1"
MALFORMED_ID = "not-a-capsule-id"
TERMINAL = {"stopped", "error"}

BUSYBOX = "busybox"
MINIMAL = "minimal"


# ─────────────────────────────────────────────────────────────────────────────
# Generic helpers
# ─────────────────────────────────────────────────────────────────────────────


def poll(
    fn: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    """Call ``fn`` until it returns a truthy value; return it. Fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def assert_error(resp: httpx.Response, status: int, code: str | set[str]) -> dict:
    """Assert the contract's error shape (§2.1) with the given status and code."""
    codes = {code} if isinstance(code, str) else code
    ctype = resp.headers.get("content-type", "")
    try:
        body = resp.json()
    except Exception:
        raise AssertionError(
            f"{resp.request.method} {resp.request.url.path}: expected JSON error body, got "
            f"{resp.status_code} {ctype!r} {resp.text[:300]!r}"
        ) from None
    detail = f"{resp.request.method} {resp.request.url.path} -> {resp.status_code} {body!r}"
    assert resp.status_code != 500, f"server error: {detail}"
    assert resp.status_code == status, f"expected {status}: {detail}"
    assert "application/json" in ctype, f"content-type {ctype!r}: {detail}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), detail
    err = body["error"]
    assert err.get("code") in codes, f"expected code in {codes}: {detail}"
    assert isinstance(err.get("message"), str) and err["message"], f"empty message: {detail}"
    return err


def iterate_with_deadline(iterable: Iterable[Any], timeout: float) -> Iterator[Any]:
    """Yield from ``iterable`` (consumed in a daemon thread); fail if an item takes longer
    than ``timeout`` seconds to arrive. Protects tests from a server that never answers."""
    q: queue.Queue = queue.Queue()
    done = object()

    def pump() -> None:
        try:
            for item in iterable:
                q.put(("item", item))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the test thread
            q.put(("exc", exc))
        q.put(("done", done))

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            kind, value = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the server within {timeout}s") from None
        if kind == "done":
            return
        if kind == "exc":
            raise value
        yield value


WS_UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "ZTJlLXRlc3Qta2V5LTEyMw==",
}


def ws_refusal(exc: BaseException) -> httpx.Response:
    """httpx-ws closes the refused response before we can read it: replay the upgrade request
    without streaming to get the (JSON) body of the refusal."""
    import httpx_ws

    assert isinstance(exc, httpx_ws.WebSocketUpgradeError), exc
    req = exc.response.request
    headers = {k: v for k, v in req.headers.items() if k.lower() == "x-api-key"}
    r = httpx.get(str(req.url), headers={**headers, **WS_UPGRADE_HEADERS}, timeout=30)
    assert r.status_code == exc.response.status_code, (r.status_code, exc.response.status_code)
    return r


def ws_send_text(ws: Any, text: str) -> None:
    """Send, tolerating a server that already reported an error and closed (allowed for
    capsule-missing / not-running: the error frame may precede the client's first message)."""
    import httpx_ws
    from wsproto.utilities import LocalProtocolError

    with contextlib.suppress(LocalProtocolError, httpx_ws.WebSocketNetworkError):
        ws.send_text(text)


def skip_if_ws_unimplemented(exc: BaseException, what: str) -> None:
    """Skip (visibly) when a WebSocket route answers 501, or 404 for the route itself (as
    opposed to a JSON 404 for an unknown capsule)."""
    import httpx_ws

    if not isinstance(exc, httpx_ws.WebSocketUpgradeError):
        return
    status = exc.response.status_code
    if status == 501:
        pytest.skip(f"{what} not implemented by the server (501)")
    if status == 404:
        body = ws_refusal(exc).text[:200]
        if "route" in body:
            pytest.skip(f"{what} not implemented by the server: 404 {body}")


ON_MICROVM = os.environ.get("WRENN_RUNTIME") == "microvm"


def container_only(reason: str) -> pytest.MarkDecorator:
    """Skips a test of the container's own internals when the server runs microVMs."""
    return pytest.mark.skipif(ON_MICROVM, reason=f"microvm: {reason}")


def qemu_pids(capsule_id: str) -> list[int]:
    """Host pids of the QEMU processes of capsule ``capsule_id`` (named ``wrenn-<id>``)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"qemu-system-x86_64") and f"wrenn-{capsule_id}".encode() in b" ".join(cmd):
            out.append(int(p.name))
    return out


def agent_pid(capsule_id: str) -> int:
    """The host process that runs the capsule's agent: the agent itself (its init, found by its
    cgroup) in a container; under microvm the VM's QEMU, whose stop or death is the agent's."""
    if ON_MICROVM:
        pids = qemu_pids(capsule_id)
        assert len(pids) == 1, f"QEMU processes of {capsule_id}: {pids}"
        return pids[0]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if argv0.endswith(b"wrenn-agent") and f"/{capsule_id}" in cgroups:
            return int(entry.name)
    raise AssertionError(f"no agent process for {capsule_id}")


class ConcurrentCalls:
    """Runs named calls at once, each in its own thread; `wait` answers, per name, what it
    returned or raised and how long it took."""

    def __init__(self, calls: dict[str, Callable[[], Any]]) -> None:
        self.results: dict[str, tuple[Any, float]] = {}
        self.threads = [
            threading.Thread(target=self._call, args=kv, daemon=True) for kv in calls.items()
        ]
        for t in self.threads:
            t.start()

    def _call(self, name: str, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            outcome: Any = fn()
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        self.results[name] = (outcome, time.monotonic() - t0)

    def wait(self, timeout: float) -> dict[str, tuple[Any, float]]:
        for t in self.threads:
            t.join(timeout=timeout)
        assert not any(t.is_alive() for t in self.threads), self.results
        return self.results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mounts_under(path: Path) -> list[str]:
    """Mount points (from /proc/self/mountinfo) at or below ``path``."""
    root = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == root or mp.startswith(root + "/"):
                found.append(mp)
    return found


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# ─────────────────────────────────────────────────────────────────────────────
# The server under test
# ─────────────────────────────────────────────────────────────────────────────


def _path_from_env(var: str, default: str) -> Path:
    p = Path(os.environ.get(var, default))
    return p if p.is_absolute() else REPO_ROOT / p


class WrennServer:
    def __init__(
        self, extra_args: list[str] | None = None, inherit_fds: tuple[int, ...] = ()
    ) -> None:
        self.extra_args = list(extra_args or [])
        # Fds the server inherits from its parent, as a supervisor's lock or socket would be.
        self.inherit_fds = inherit_fds
        self.bin = _path_from_env("WRENN_BIN", "target/debug/wrenn")
        self.agent = _path_from_env(
            "WRENN_AGENT", "target/x86_64-unknown-linux-gnu/release/wrenn-agent"
        )
        self.cache = _path_from_env("WRENN_CACHE", "/var/cache/wrenn")
        for p, var in ((self.bin, "WRENN_BIN"), (self.agent, "WRENN_AGENT")):
            if not p.exists():
                pytest.exit(f"{var}: {p} does not exist (build it first)", returncode=3)
        self.data_dir = Path(tempfile.mkdtemp(prefix="wrenn-e2e-"))
        # Run private copies: other people rebuild target/ while the suite runs, and the server
        # re-executes its own binary (capsule launcher, restarts).
        bin_dir = self.data_dir / "bin"
        bin_dir.mkdir()
        self.bin = Path(shutil.copy2(self.bin, bin_dir / "wrenn"))
        self.agent = Path(shutil.copy2(self.agent, bin_dir / "wrenn-agent"))
        self.log_path = self.data_dir / "server.log"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.key_alpha = self.create_key("alpha")
        self.key_beta = self.create_key("beta")

    @property
    def capsules_dir(self) -> Path:
        """Where the served runtime keeps its capsules' run directories."""
        return self.data_dir / "microvm" / "capsules" if ON_MICROVM else self.data_dir / "capsules"

    # -- keys -----------------------------------------------------------------
    def create_key(self, team: str) -> str:
        out = subprocess.run(
            [str(self.bin), "key", "create", "--team", team, "--dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"key create failed: {out.stderr}"
        lines = [line for line in out.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"`wrenn key create` must print exactly one line: {out.stdout!r}"
        return lines[0].strip()

    # -- process --------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> None:
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [
                str(self.bin),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--dir",
                str(self.data_dir),
                "--cache-dir",
                str(self.cache),
                "--agent",
                str(self.agent),
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            pass_fds=self.inherit_fds,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} during start-up\n{self.log_tail()}"
                )
            try:
                r = httpx.get(f"{self.base_url}/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {timeout}s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, *, kill: bool = False, timeout: float = 30) -> None:
        """SIGTERM (or SIGKILL) the server and wait for it. A graceful stop that hangs is
        reported as a failure (after the process has been killed)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"server did not exit within {timeout}s of SIGTERM\n{self.log_tail()}"
            ) from None
        finally:
            self.proc = None
            if self._log:
                self._log.close()
                self._log = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "----- server log (tail) -----\n" + "\n".join(lines[-n:])

    # -- raw clients ----------------------------------------------------------
    def client(self, key: str | None, **kw: Any) -> httpx.Client:
        headers = {"X-API-Key": key} if key is not None else {}
        kw.setdefault("timeout", httpx.Timeout(60.0, connect=10.0))
        return httpx.Client(base_url=self.base_url, headers=headers, **kw)

    # -- capsule housekeeping -------------------------------------------------
    def destroy_all(self, timeout: float = 60) -> list[str]:
        """DELETE every capsule visible to either key; wait until they are gone."""
        left: list[tuple[str, str]] = []
        for key in (self.key_alpha, self.key_beta):
            with self.client(key) as c:
                r = c.get("/v1/capsules")
                if r.status_code != 200:
                    continue
                for cap in r.json():
                    left.append((key, cap["id"]))
                    c.delete(f"/v1/capsules/{cap['id']}")
        for key, cid in left:
            with self.client(key) as c:

                def gone() -> bool:
                    r = c.get(f"/v1/capsules/{cid}")
                    return r.status_code == 404 or r.json().get("status") in TERMINAL

                with contextlib.suppress(AssertionError):
                    poll(gone, timeout=timeout, interval=0.5, what=f"{cid} destroyed")
        return [cid for _, cid in left]


def wait_status(
    client: httpx.Client,
    cid: str,
    targets: set[str],
    *,
    timeout: float = 30,
    fail_on: set[str] = frozenset({"error"}),
) -> dict:
    """Poll GET /v1/capsules/{id} (raw) until the status is one of ``targets``."""
    last: dict = {}

    def check() -> bool:
        nonlocal last
        r = client.get(f"/v1/capsules/{cid}")
        assert r.status_code == 200, f"GET {cid}: {r.status_code} {r.text}"
        last = r.json()
        assert last.get("status") not in fail_on, f"{cid} entered {last.get('status')}: {last}"
        return last.get("status") in targets

    poll(check, timeout=timeout, interval=0.25, what=f"{cid} status in {targets}")
    return last


@pytest.fixture(scope="session")
def server() -> Iterator[WrennServer]:
    srv = WrennServer()
    failure: str | None = None
    try:
        srv.start()
        os.environ["WRENN_BASE_URL"] = srv.base_url
        os.environ["WRENN_API_KEY"] = srv.key_alpha
        os.environ.pop("WRENN_PROXY_DOMAIN", None)
        _warm_up_templates(srv)
        yield srv
    finally:
        try:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.destroy_all()
        except Exception as exc:  # noqa: BLE001
            failure = f"destroying leftover capsules failed: {exc!r}"
        try:
            srv.stop()
        except AssertionError as exc:
            failure = str(exc)
        log_dir = os.environ.get("WRENN_E2E_LOG_DIR")
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy2(srv.log_path, Path(log_dir) / f"{srv.data_dir.name}.log")
        mounted = mounts_under(srv.data_dir)
        if mounted:
            # Leave the dir alone: removing it under live mounts would destroy evidence (or worse).
            pytest.fail(
                f"mounts left under {srv.data_dir} after the server stopped: {mounted}\n"
                f"{srv.log_tail()}",
                pytrace=False,
            )
        if failure:
            print(f"\n{failure}\n{srv.log_tail()}")
            shutil.rmtree(srv.data_dir, ignore_errors=True)
            pytest.fail(failure, pytrace=False)
        shutil.rmtree(srv.data_dir, ignore_errors=True)


def _warm_up_templates(srv: WrennServer) -> None:
    """The `minimal` template may need to be built (debootstrap, minutes the first time)."""
    with srv.client(srv.key_alpha, timeout=httpx.Timeout(600.0, connect=10.0)) as c:
        r = c.post("/v1/capsules", json={"template": MINIMAL})
        assert r.status_code in (200, 201, 202), f"warm-up create: {r.status_code} {r.text}"
        cid = r.json()["id"]
        try:
            wait_status(c, cid, {"running"}, timeout=600, fail_on={"error", "stopped"})
        except AssertionError as exc:
            raise AssertionError(f"warm-up of template {MINIMAL!r} failed: {exc}\n{srv.log_tail()}")
        finally:
            c.delete(f"/v1/capsules/{cid}")

        def gone() -> bool:
            r = c.get(f"/v1/capsules/{cid}")
            return r.status_code == 404 or r.json().get("status") in TERMINAL

        poll(gone, timeout=60, interval=0.5, what=f"warm-up capsule {cid} destroyed")


@pytest.fixture(autouse=True)
def _server_log_on_failure(request: pytest.FixtureRequest, server: WrennServer) -> Iterator[None]:
    """Attach the tail of the server log to every failing test's report (a failed fixture's
    too: a capsule that did not start)."""
    yield
    reps = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    if any(rep is not None and rep.failed for rep in reps):
        print(server.log_tail(40))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# ─────────────────────────────────────────────────────────────────────────────
# Client fixtures
# ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def api(server: WrennServer) -> Iterator[httpx.Client]:
    """Raw httpx client with team alpha's key (for bad-input tests)."""
    with server.client(server.key_alpha) as c:
        yield c


@pytest.fixture
def api_beta(server: WrennServer) -> Iterator[httpx.Client]:
    with server.client(server.key_beta) as c:
        yield c


@pytest.fixture
def api_nokey(server: WrennServer) -> Iterator[httpx.Client]:
    with server.client(None) as c:
        yield c


@pytest.fixture
def wrenn_client(server: WrennServer):
    from wrenn import WrennClient

    with WrennClient() as c:
        yield c


@pytest.fixture
def make_capsule(server: WrennServer):
    """Factory: ``make_capsule(template="busybox", **kw)`` → running SDK Capsule; every capsule
    made is destroyed (and waited for) at the end of the test."""
    from wrenn import Capsule

    made: list[Capsule] = []

    def make(template: str = BUSYBOX, **kw: Any) -> Capsule:
        kw.setdefault("wait", True)
        cap = Capsule(template=template, **kw)
        made.append(cap)
        return cap

    try:
        yield make
    finally:
        errors = []
        for cap in made:
            try:
                cap.destroy(wait=True)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{cap.capsule_id}: {exc!r}")
            finally:
                with contextlib.suppress(Exception):
                    cap._client.close()
        if errors:
            pytest.fail(f"destroying test capsules failed: {errors}", pytrace=False)


@pytest.fixture
def capsule(make_capsule):
    """A running busybox capsule (starts in milliseconds)."""
    return make_capsule(BUSYBOX)


@pytest.fixture
def minimal_capsule(make_capsule):
    """A running `minimal` (Debian) capsule: bash, coreutils, python3, git."""
    return make_capsule(MINIMAL)


@pytest.fixture
def restart_server(server: WrennServer):
    """``restart_server(kill=False)``: SIGTERM (or SIGKILL) the server and start it again on
    the same port and data dir."""

    def restart(*, kill: bool = False) -> None:
        server.restart(kill=kill)

    return restart


def capsule_ids(client: httpx.Client) -> set[str]:
    r = client.get("/v1/capsules")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list), f"GET /v1/capsules must be an array: {body!r}"
    return {c["id"] for c in body}


# ─────────────────────────────────────────────────────────────────────────────
# PTY helper
# ─────────────────────────────────────────────────────────────────────────────


class PtyReader:
    """Consumes a PtySession's events in a thread; ``expect()`` waits for output."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.events: queue.Queue = queue.Queue()
        self.output = b""
        self.cursor = 0  # expect() searches output from here
        self.controls: list[Any] = []
        self.ended = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for ev in self.session:
                self.events.put(ev)
        except BaseException as exc:  # noqa: BLE001
            self.events.put(exc)
        self.events.put(None)

    def _next(self, deadline: float) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise queue.Empty
        ev = self.events.get(timeout=remaining)
        if ev is None:
            self.ended = True
        elif isinstance(ev, BaseException):
            raise ev
        elif ev.type == "output":
            self.output += ev.data
        else:
            self.controls.append(ev)
        return ev

    def wait_control(self, type_: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self._next(deadline)
            except queue.Empty:
                raise AssertionError(
                    f"no {type_!r} PTY event within {timeout}s; controls={self.controls} "
                    f"output={self.output[-300:]!r}"
                ) from None
            if ev is None:
                raise AssertionError(
                    f"PTY stream ended before {type_!r}; controls={self.controls} "
                    f"output={self.output[-300:]!r}"
                )
            if ev.type != "output" and ev.type == type_:
                return ev

    def expect(self, pattern: bytes | str, timeout: float = 15) -> re.Match:
        if isinstance(pattern, str):
            pattern = pattern.encode()
        rx = re.compile(pattern)
        start = self.cursor
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.output, start)
            if m:
                self.cursor = m.end()
                return m
            try:
                ev = self._next(deadline)
            except queue.Empty:
                raise AssertionError(
                    f"PTY output did not match {pattern!r} within {timeout}s; got "
                    f"{self.output[start:][-500:]!r}; controls={self.controls}"
                ) from None
            if ev is None:
                m = rx.search(self.output, start)
                if m:
                    self.cursor = m.end()
                    return m
                raise AssertionError(
                    f"PTY ended before {pattern!r}; got {self.output[start:][-500:]!r}; "
                    f"controls={self.controls}"
                )


# ─────────────────────────────────────────────────────────────────────────────
# SSE helper
# ─────────────────────────────────────────────────────────────────────────────


class EventCollector:
    """Reads ``WrennClient.events.stream()`` in a thread and records every SSEEvent."""

    def __init__(self, api_key: str | None = None) -> None:
        from wrenn import WrennClient

        self.client = WrennClient(api_key=api_key)
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.ended = False
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for ev in self.client.events.stream():
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 30, what: str = "event"):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                if self.ended:
                    raise AssertionError(
                        f"event stream ended ({self.error!r}) before {what}; got {self.summary()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; got {self.summary()}")
                self._cond.wait(remaining)

    def summary(self) -> list[tuple]:
        return [
            (e.event, e.outcome, e.resource.id if e.resource else None) for e in self.events
        ]

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def event_collector(server):
    """``event_collector(api_key=None)`` → connected EventCollector, closed after the test."""
    made: list[EventCollector] = []

    def make(api_key: str | None = None) -> EventCollector:
        c = EventCollector(api_key)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
