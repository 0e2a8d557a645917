"""E2B's code-interpreter API on port 49999 (contract e2b-api.md §6), over Jupyter kernels.

Kernels are started, restarted and deleted through Jupyter Server's REST API on 127.0.0.1:8888,
so Jupyter Server and this service see the same kernels. Code runs over each kernel's ZMQ
channels with jupyter_client directly: one hop less than Jupyter Server's kernel WebSocket, and
no JSON re-encoding of every message in between.

Routes: `POST /execute` (an NDJSON stream, one line per kernel message, flushed as produced),
`GET|POST /contexts`, `DELETE /contexts/{id}`, `POST /contexts/{id}/restart`, `GET /health`
(200 once the default python context runs code and the spare kernel, if the memory has room
for one, has started; the template's readiness probe).

A context is an id over the kernel it currently runs on. The service keeps one spare kernel,
started and past its start-up lines (the numpy, pandas and matplotlib imports: ~1 s in a
container, ~15 s in an emulated microVM guest): a new context, a restart and a context whose
kernel died take it, under the context's own id, and the next spare starts in the background.
Jupyter Server does not restart dead kernels (files/jupyter_server_config.json): a context finds
its kernel gone on its next cell, which reports the loss, and moves on to the spare.
Kernels start one at a time: a take finds the spare still starting and waits for it rather than
starting a second one next to it. A warm image (saved once the capsule is ready) and the
capsules of the warm pool therefore hold a ready spare too. The spare yields to the user's
cells: it is shut down when free memory runs low (and is the OOM killer's first pick), and
comes back once there is room; with no spare and no room for one more kernel, a new context is
a 503 that says so.

The sandbox's default environment (create's `envVars`, `E2B_SANDBOX_ID`, ...) reaches envd,
which this service cannot call (no TCP listener in the capsule); the agent also writes it to
SANDBOX_ENV (root only), and it is applied to a kernel before each execution whenever it
changed since that kernel last had it.
"""

import asyncio
import datetime
import json
import os
import queue
import signal
import time

import tornado.httpclient
import tornado.httpserver
import tornado.iostream
import tornado.web
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_core.paths import jupyter_runtime_dir

JUPYTER = os.environ.get("WRENN_JUPYTER_URL", "http://127.0.0.1:8888")
PORT = int(os.environ.get("WRENN_CI_PORT", "49999"))
# Written by start-jupyter.py once Jupyter Server and its pre-started kernel are ready.
JUPYTER_READY = os.environ.get("WRENN_JUPYTER_READY", "/dev/shm/wrenn-jupyter-ready")
# The sandbox's default environment, written by the agent on each `PUT /envd-config`.
SANDBOX_ENV = os.environ.get("WRENN_SANDBOX_ENV", "/run/wrenn-envd/env.json")
KERNEL = "wrenn"
DEFAULT_CWD = "/home/user"
KEEPALIVE_SEC = 5.0
# How often a waiting execution checks its client and its kernel's process.
POLL_SEC = 0.5
# After an interrupt (the client went away), how long the cell may take to stop.
DRAIN_SEC = 10.0
PYTHON_NAMES = (None, "", "python", "python3")
# What one more kernel needs: a started kernel's PSS is ~99 MiB in a microVM guest (~85 MiB of
# it its own), and a user's cells need room beside it. A spare is kept only while this much
# memory is available: in a 512 MiB guest (470 MiB usable) the default context's kernel and the
# spare leave ~170 MiB, so the spare is refilled after one more context and not after a second
# (those start a kernel when asked, as without a spare).
KERNEL_MIB = 100
SPARE_HEADROOM_MIB = 64
# Below this much free memory the spare is shut down, its memory the user's cells'; it comes
# back once KERNEL_MIB + SPARE_HEADROOM_MIB are free again. Checked every MEMORY_POLL_SEC: a
# cell whose memory grows over seconds gets the spare's, one that takes it at once meets the OOM
# killer, which takes the spare first where its score can outweigh the cell's kernel (see
# SPARE_OOM_SCORE_ADJ).
RELEASE_SPARE_MIB = 64
MEMORY_POLL_SEC = 0.5
# How long a starting kernel may take to answer kernel_info (it runs its start-up lines first).
# Spares start in the background, and in an emulated guest on a loaded host a start took 40-90 s.
KERNEL_START_SEC = 180

# Jupyter MIME type -> key of a `result` line; anything else goes under `extra`.
MIME_KEYS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}

# Silent cells (no history, no execution count, no outputs): they touch only the os module.
INIT = "(lambda o, d: (o.makedirs(d, exist_ok=True), o.chdir(d)))(__import__('os'), {cwd})"
SET_ENV = (
    "(lambda o, e: (setattr(o, '_wrenn_saved_env', {{k: o.environ.get(k) for k in e}}),"
    " o.environ.update(e)))(__import__('os'), {env})"
)
APPLY_SANDBOX_ENV = (
    "(lambda o, e, gone: ([o.environ.pop(k, None) for k in gone], o.environ.update(e)))"
    "(__import__('os'), {env}, {gone})"
)
RESTORE_ENV = (
    "(lambda o: [o.environ.pop(k, None) if v is None else o.environ.__setitem__(k, v)"
    " for k, v in o.__dict__.pop('_wrenn_saved_env', {}).items()])(__import__('os'))"
)


_sandbox_env = {"key": None, "env": {}}


def sandbox_env():
    """The sandbox's default environment ({} before the agent wrote any); re-read on change."""
    try:
        st = os.stat(SANDBOX_ENV)
    except OSError:
        return {}
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    if key != _sandbox_env["key"]:
        try:
            with open(SANDBOX_ENV, encoding="utf-8") as f:
                env = json.load(f)
        except (OSError, ValueError):
            return _sandbox_env["env"]
        if isinstance(env, dict):
            _sandbox_env["env"] = {str(k): str(v) for k, v in env.items()}
        _sandbox_env["key"] = key
    return _sandbox_env["env"]


def _read_int(path):
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _inactive_file(stat_path, key):
    try:
        with open(stat_path, encoding="ascii") as f:
            for row in f:
                name, _, value = row.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def available_mib():
    """Memory this capsule can still use, MiB: the guest's MemAvailable, or less when a
    cgroup limit (a container capsule's) is closer; reclaimable file pages count as free."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for row in f:
                if row.startswith("MemAvailable:"):
                    avail = int(row.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    limits = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current",
         "/sys/fs/cgroup/memory.stat", "inactive_file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
    )
    for limit_path, usage_path, stat_path, key in limits:
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is None or usage is None or limit >= 1 << 60:
            continue
        left = limit - usage + _inactive_file(stat_path, key)
        avail = left if avail is None else min(avail, left)
    return None if avail is None else avail // (1024 * 1024)


def set_oom_score_adj(pid, value):
    """Sets a process's OOM score adjustment (logged, not raised, when it cannot)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(value))
    except OSError as e:
        print(f"code-interpreter: oom_score_adj of {pid}: {e}", flush=True)


# Every kernel starts with this service's OOM score adjustment (Jupyter Server's children);
# a spare's is raised to the maximum and brought back here when a context takes it. Lowering it
# back needs no privilege: never below what a privileged writer last set (the capsule's level).
OWN_OOM_SCORE_ADJ = _read_int("/proc/self/oom_score_adj") or 0
SPARE_OOM_SCORE_ADJ = 1000


def room_for_a_spare():
    """Whether a spare kernel fits with room left for the user's cells (unknown: yes)."""
    avail = available_mib()
    return avail is None or avail >= KERNEL_MIB + SPARE_HEADROOM_MIB


class NoRoom(Exception):
    """A kernel was asked for, there is no spare, and one more does not fit in memory: started
    anyway, it would push a swapless guest into thrashing or wake the OOM killer."""

    def __init__(self, avail):
        super().__init__(
            f"not enough memory for another kernel: {avail} MiB free, a kernel needs about"
            f" {KERNEL_MIB} MiB; delete a context, or create the sandbox with more memory"
        )


class Gone(Exception):
    """The kernel's process went away (during a cell, or before it: Jupyter Server does not
    restart it)."""


async def jupyter(method, path, body=None, missing_ok=False):
    """Calls Jupyter Server's REST API; returns the decoded JSON body (or None)."""
    req = tornado.httpclient.HTTPRequest(
        JUPYTER + path,
        method=method,
        body=None if body is None and method != "POST" else json.dumps(body or {}),
        headers={"Content-Type": "application/json"},
        request_timeout=60,
    )
    try:
        resp = await tornado.httpclient.AsyncHTTPClient().fetch(req)
    except tornado.httpclient.HTTPClientError as e:
        if missing_ok and e.code == 404:
            return None
        raise
    return json.loads(resp.body) if resp.body else None


def line(obj):
    return json.dumps(obj, separators=(",", ":"), default=str) + "\n"


def timestamp(msg):
    d = msg["header"].get("date")
    if isinstance(d, datetime.datetime):
        return d.isoformat()
    return d or datetime.datetime.now(datetime.timezone.utc).isoformat()


def result_line(content, main):
    """A `result` line from an execute_result / display_data message."""
    out = {"type": "result", "is_main_result": main}
    extra = {}
    for mime, value in content.get("data", {}).items():
        key = MIME_KEYS.get(mime)
        if key is None:
            extra[mime] = value
            continue
        if key == "text" and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif key in ("png", "jpeg") and isinstance(value, str):
            value = value.replace("\n", "")
        out[key] = value
    if extra:
        out["extra"] = extra
    return out


class Kernel:
    """One Jupyter kernel of the `wrenn` kernelspec, with its client and its process id."""

    def __init__(self, kernel_id):
        self.id = kernel_id
        self.client = None
        self.pid = None

    @classmethod
    async def start(cls, spare=False):
        """Starts a kernel through Jupyter Server and returns it once it runs code. A spare is
        the OOM killer's first pick in the capsule: memory a user's cell needs comes from the
        idle spare (~85 MiB of its own), not from a context's kernel."""
        kernel = cls((await jupyter("POST", "/api/kernels", {"name": KERNEL}))["id"])
        try:
            await kernel.connect()
        except BaseException:
            await kernel.shutdown()
            raise
        if spare:
            set_oom_score_adj(kernel.pid, SPARE_OOM_SCORE_ADJ)
        return kernel

    async def connect(self):
        """Connects (first use) and waits for the process (first use, after a loss)."""
        if self.client is None:
            conn = os.path.join(jupyter_runtime_dir(), f"kernel-{self.id}.json")
            deadline = time.monotonic() + 30
            while not os.path.exists(conn):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no connection file for kernel {self.id}")
                await asyncio.sleep(0.02)
            client = AsyncKernelClient(connection_file=conn)
            client.load_connection_file()
            client.start_channels()
            self.client = client
        if self.pid is None:
            await self.kernel_info()
            reply = await self.silent("", {"pid": "__import__('os').getpid()"})
            if reply.get("status") != "ok":
                raise RuntimeError(f"kernel {self.id}: {reply.get('evalue', reply)}")
            self.pid = int(reply["user_expressions"]["pid"]["data"]["text/plain"])

    async def kernel_info(self):
        """Waits until the kernel answers kernel_info (it has started and run its exec_lines).

        (jupyter_client's wait_for_ready judges a fresh client's heartbeat too early.)"""
        deadline = time.monotonic() + KERNEL_START_SEC
        while True:
            msg_id = self.client.kernel_info()
            try:
                while True:
                    msg = await self.client.get_shell_msg(timeout=1.0)
                    if msg["parent_header"].get("msg_id") == msg_id:
                        return
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kernel {self.id} did not answer kernel_info") from None

    async def silent(self, code, expressions=None):
        """Runs a cell that leaves no trace in history or outputs; returns its reply content."""
        msg_id = self.client.execute(
            code, silent=True, store_history=False, user_expressions=expressions or {}
        )
        deadline = time.monotonic() + 30
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("the kernel did not answer a silent cell")
            try:
                msg = await self.client.get_shell_msg(timeout=min(left, POLL_SEC))
            except queue.Empty:
                if self.pid is not None and not self.alive():
                    raise Gone() from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]

    def alive(self):
        """Whether the kernel's process still runs (a zombie does not)."""
        if self.pid is None:
            return False
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except (OSError, IndexError):
            return False

    def kill(self):
        """Kills the kernel's process (Jupyter Server keeps the kernel, dead, until it is shut
        down: the template turns its automatic restarts off)."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    async def shutdown(self):
        """Ends the kernel's process at once and removes the kernel from Jupyter Server. Never
        raises: the process is gone either way, and whoever ends a kernel moves on."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        self.kill()
        self.pid = None
        try:
            await jupyter("DELETE", f"/api/kernels/{self.id}", missing_ok=True)
        except Exception as e:  # noqa: BLE001 (logged; the kernel's process is already gone)
            print(f"code-interpreter: removing kernel {self.id}: {e!r}", flush=True)


class Context:
    """A context: its id, its cwd, the kernel it runs on, and the lock that runs its cells one
    at a time. The id stays when the kernel is replaced (restart, loss)."""

    def __init__(self, context_id, cwd, kernel):
        self.id = context_id
        self.language = "python"
        self.cwd = cwd
        # None after a replacement failed: the next cell takes a kernel first.
        self.kernel = kernel
        # The kernel process that has this context's cwd (None: none yet). Keyed by process, so
        # that no process ever runs a cell of the context without it, whatever replaced it.
        self.init_pid = None
        # The sandbox environment that process has (None: not applied since it started).
        self.sandbox_env = None
        self.lock = asyncio.Lock()

    def json(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def ready(self):
        """Makes sure the kernel runs and its process has the context's cwd (first use, after
        a swap)."""
        await self.kernel.connect()
        if self.init_pid != self.kernel.pid:
            self.sandbox_env = None
            reply = await self.kernel.silent(INIT.format(cwd=json.dumps(self.cwd)))
            if reply.get("status") != "ok":
                raise RuntimeError(f"init cell failed: {reply.get('evalue', reply)}")
            self.init_pid = self.kernel.pid

    async def apply_sandbox_env(self):
        """Brings the kernel's environment up to the sandbox's, if that changed."""
        env = sandbox_env()
        if env == self.sandbox_env or (not env and self.sandbox_env is None):
            return
        gone = sorted(set(self.sandbox_env or {}) - set(env))
        code = APPLY_SANDBOX_ENV.format(env=json.dumps(env), gone=json.dumps(gone))
        reply = await self.kernel.silent(code)
        if reply.get("status") != "ok":
            why = reply.get("evalue", reply)
            raise RuntimeError(f"cannot set the sandbox environment: {why}")
        self.sandbox_env = env

    async def execute(self, code, env_vars, emit, gone):
        """Runs `code`, calling `emit(line)` for each output; `gone()` says the caller left.
        The caller holds the lock and has made sure the context has a kernel."""
        await self.ready()
        await self.apply_sandbox_env()
        kernel = self.kernel
        if env_vars:
            await kernel.silent(SET_ENV.format(env=json.dumps(env_vars)))
        try:
            msg_id = kernel.client.execute(code, store_history=True, allow_stdin=False)
            await self.stream(msg_id, emit, gone)
        finally:
            if env_vars and kernel.alive():
                await kernel.silent(RESTORE_ENV)

    async def stream(self, msg_id, emit, gone):
        kernel = self.kernel
        last = time.monotonic()
        interrupted = None
        while True:
            try:
                msg = await kernel.client.get_iopub_msg(timeout=POLL_SEC)
            except queue.Empty:
                msg = None
            if not kernel.alive():
                raise Gone()
            if interrupted is None and gone():
                interrupted = time.monotonic()
                await jupyter("POST", f"/api/kernels/{kernel.id}/interrupt")
            if interrupted is not None and time.monotonic() - interrupted > DRAIN_SEC:
                return
            if msg is None:
                if interrupted is None and time.monotonic() - last >= KEEPALIVE_SEC:
                    await emit({"type": "keepalive"})
                    last = time.monotonic()
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            out = None
            if kind == "execute_input":
                out = {"type": "number_of_executions", "execution_count": content["execution_count"]}
            elif kind == "stream":
                out = {"type": content["name"], "text": content["text"], "timestamp": timestamp(msg)}
            elif kind in ("execute_result", "display_data"):
                out = result_line(content, kind == "execute_result")
            elif kind == "error":
                out = {
                    "type": "error",
                    "name": content["ename"],
                    "value": content["evalue"],
                    "traceback": "\n".join(content["traceback"]),
                }
            elif kind == "status" and content["execution_state"] == "idle":
                await emit({"type": "end_of_execution"})
                return
            if out is not None:
                await emit(out)
                last = time.monotonic()


class Contexts:
    """Every context of this service, and the spare kernel; the default python context is the
    kernel start-jupyter.py pre-started."""

    def __init__(self):
        self.by_id = {}
        self.default = None
        self.ready = False
        # The spare kernel: a task that starts it (None while none is being started).
        self.spare = None
        # Held while a spare is taken: a second taker waits for the next spare.
        self.taking = asyncio.Lock()

    async def start(self):
        """Adopts the kernel start-jupyter.py pre-started (warm imports) once it is ready, then
        starts the spare; ready when both are."""
        while not os.path.exists(JUPYTER_READY):
            await asyncio.sleep(0.02)
        kernels = await jupyter("GET", "/api/kernels")
        kid = next((k["id"] for k in kernels if k.get("name") == KERNEL), None)
        kernel = Kernel(kid) if kid is not None else await Kernel.start()
        ctx = Context(kernel.id, DEFAULT_CWD, kernel)
        await ctx.ready()
        self.by_id[ctx.id] = ctx
        self.default = ctx
        if self.refill():
            await self.spare
        asyncio.create_task(self.watch_memory())
        self.ready = True
        spare = "a spare kernel" if self.spare else f"no spare kernel ({available_mib()} MiB free)"
        print(f"code-interpreter: ready, default context {ctx.id}, {spare}", flush=True)

    def refill(self):
        """Starts the next spare in the background unless one is being started or the memory
        is short; says whether there is a spare (ready or starting)."""
        if self.spare is None and room_for_a_spare():
            self.spare = asyncio.create_task(Kernel.start(spare=True))
        return self.spare is not None

    async def watch_memory(self):
        """Shuts the idle spare down when free memory runs low, and starts the next one once
        there is room again."""
        while True:
            await asyncio.sleep(MEMORY_POLL_SEC)
            task = self.spare
            if task is None:
                self.refill()
                continue
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            avail = available_mib()
            if avail is None or avail >= RELEASE_SPARE_MIB or self.taking.locked():
                continue
            # (A take that got this kernel meanwhile finds it dead and starts another.)
            self.spare = None
            await task.result().shutdown()
            print(f"code-interpreter: shut the spare kernel down, {avail} MiB free", flush=True)

    async def take(self):
        """The spare kernel, waiting for it while it starts; the next one starts after."""
        async with self.taking:
            while True:
                if self.spare is None:
                    # No spare (memory was short): this take starts the kernel it waits for,
                    # if it fits.
                    avail = available_mib()
                    if avail is not None and avail < KERNEL_MIB:
                        raise NoRoom(avail)
                    self.spare = asyncio.create_task(Kernel.start())
                task = self.spare
                try:
                    kernel = await asyncio.shield(task)
                except Exception:
                    self.spare = None
                    raise
                self.spare = None
                if kernel.alive():
                    set_oom_score_adj(kernel.pid, OWN_OOM_SCORE_ADJ)
                    break
                # The idle spare died (the OOM killer's first pick): start another one, if it
                # fits.
                await kernel.shutdown()
        self.refill()
        return kernel

    async def create(self, cwd):
        kernel = await self.take()
        # The first kernel's id names the context for good.
        ctx = Context(kernel.id, cwd or DEFAULT_CWD, kernel)
        self.by_id[ctx.id] = ctx
        await ctx.ready()
        return ctx

    async def python_default(self):
        if self.default is None or self.default.id not in self.by_id:
            self.default = await self.create(DEFAULT_CWD)
        return self.default

    async def remove(self, ctx):
        self.by_id.pop(ctx.id, None)
        if ctx.kernel is not None:
            # A cell still running ends (its caller gets UnexpectedEndOfExecution).
            ctx.kernel.kill()
        async with ctx.lock:
            if ctx.kernel is not None:
                await ctx.kernel.shutdown()
        self.refill()

    async def replace(self, ctx):
        """Ends the kernel `ctx` ran on (if any) and puts the context on the spare (caller holds
        ctx.lock). Should taking the spare fail, the context is left without a kernel, and its
        next cell tries again: never on the old kernel's id, which Jupyter Server may have
        given a new process."""
        if ctx.kernel is not None:
            old, ctx.kernel = ctx.kernel, None
            await old.shutdown()
        ctx.kernel = await self.take()
        await ctx.ready()

    async def ensure_kernel(self, ctx):
        """Puts a context left without a kernel by a failed replacement on one (lock held)."""
        if ctx.kernel is None:
            await self.replace(ctx)

    async def restart(self, ctx):
        async with ctx.lock:
            await self.replace(ctx)


class Handler(tornado.web.RequestHandler):
    def initialize(self, contexts):
        self.contexts = contexts

    def fail(self, status, message):
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    def body(self):
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.fail(400, "the body must be a JSON object")
            return None
        return data

    def unsupported(self, language):
        self.fail(400, f"language {language!r} is not available in this sandbox (only python)")

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, NoRoom):
            self.set_status(503)
            self.finish(str(exc))
            return
        self.finish(f"{self._reason}: {exc}" if exc else self._reason)

    def log_exception(self, typ, value, tb):
        if isinstance(value, NoRoom):
            print(f"code-interpreter: {self.request.method} {self.request.path}: {value}", flush=True)
            return
        super().log_exception(typ, value, tb)


class Health(Handler):
    def get(self):
        if self.contexts.ready:
            self.finish("OK")
        else:
            self.fail(503, "starting")


class Execute(Handler):
    closed = False

    def on_connection_close(self):
        self.closed = True

    async def post(self):
        data = self.body()
        if data is None:
            return
        code, context_id, language = data.get("code"), data.get("context_id"), data.get("language")
        env_vars = data.get("env_vars") or {}
        if not isinstance(code, str):
            return self.fail(400, "`code` must be a string")
        if context_id and language:
            return self.fail(400, "`context_id` and `language` are mutually exclusive")
        if not isinstance(env_vars, dict):
            return self.fail(400, "`env_vars` must be an object")
        env_vars = {str(k): str(v) for k, v in env_vars.items()}
        if context_id:
            ctx = self.contexts.by_id.get(context_id)
            if ctx is None:
                return self.fail(404, f"context {context_id} not found")
        elif language in PYTHON_NAMES:
            ctx = await self.contexts.python_default()
        else:
            return self.unsupported(language)
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")

        async def emit(obj):
            if self.closed:
                return
            self.write(line(obj))
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                self.closed = True

        async with ctx.lock:
            await self.contexts.ensure_kernel(ctx)
            try:
                await ctx.execute(code, env_vars, emit, lambda: self.closed)
            except Gone:
                await emit(
                    {
                        "type": "error",
                        "name": "UnexpectedEndOfExecution",
                        "value": "the kernel died (out of memory?); the context goes on with"
                        " a new kernel, without its state",
                        "traceback": "",
                    }
                )
                if not self.closed:
                    self.finish()
                # The context goes on with the spare kernel (unless it was deleted meanwhile);
                # its next cell waits for that.
                if self.contexts.by_id.get(ctx.id) is ctx:
                    await self.contexts.replace(ctx)
                return
        if not self.closed:
            self.finish()


class ContextList(Handler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps([c.json() for c in self.contexts.by_id.values()]))

    async def post(self):
        data = self.body()
        if data is None:
            return
        if data.get("language") not in PYTHON_NAMES:
            return self.unsupported(data.get("language"))
        cwd = data.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
            return self.fail(400, "`cwd` must be an absolute path")
        ctx = await self.contexts.create(cwd)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(ctx.json()))


class ContextOne(Handler):
    def find(self, context_id):
        ctx = self.contexts.by_id.get(context_id)
        if ctx is None:
            self.fail(404, f"context {context_id} not found")
        return ctx

    async def delete(self, context_id):
        ctx = self.find(context_id)
        if ctx is not None:
            await self.contexts.remove(ctx)
            self.set_status(204)
            self.finish()


class ContextRestart(ContextOne):
    async def post(self, context_id):
        ctx = self.find(context_id)
        if ctx is not None:
            await self.contexts.restart(ctx)
            self.set_status(204)
            self.finish()


def app(contexts):
    args = {"contexts": contexts}
    return tornado.web.Application(
        [
            (r"/health", Health, args),
            (r"/execute", Execute, args),
            (r"/contexts", ContextList, args),
            (r"/contexts/([^/]+)", ContextOne, args),
            (r"/contexts/([^/]+)/restart", ContextRestart, args),
        ]
    )


class NoDelayServer(tornado.httpserver.HTTPServer):
    """Sends each write at once: `/execute` streams one small NDJSON line per kernel message, and
    with Nagle's algorithm on, every line after the first waited for the client's delayed ACK
    (40 ms)."""

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        super().handle_stream(stream, address)


async def main():
    contexts = Contexts()
    NoDelayServer(app(contexts), xheaders=False).listen(PORT, address="0.0.0.0")
    await contexts.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
