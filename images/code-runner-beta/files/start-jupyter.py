"""Starts Jupyter Server, then one `wrenn` kernel, and says so in /dev/shm (the probe's file).

The capsule's readiness probe waits for that file, so a capsule is `running` only once the
SDK's first `GET /api/kernels` finds an idle kernel that has already imported numpy, pandas
and matplotlib. /dev/shm is a tmpfs of the capsule: a snapshot never carries the file over.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

READY = "/dev/shm/wrenn-jupyter-ready"
BASE = "http://127.0.0.1:8888"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def wait_for(what, fn, timeout=80.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"start-jupyter: timed out waiting for {what}")
        time.sleep(0.05)


def main():
    try:
        os.unlink(READY)
    except FileNotFoundError:
        pass
    server = subprocess.Popen(["/opt/venv/bin/jupyter", "server"])
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    t0 = time.monotonic()
    wait_for("/api/status", lambda: call("GET", "/api/status"))
    t1 = time.monotonic()
    kernels = call("GET", "/api/kernels")
    kernel = next((k for k in kernels if k.get("name") == "wrenn"), None)
    if kernel is None:
        kernel = call("POST", "/api/kernels", {"name": "wrenn"})
    kid = kernel["id"]
    # The kernel answers kernel_info only after its start-up imports (exec_lines) ran.
    from jupyter_client import BlockingKernelClient
    from jupyter_core.paths import jupyter_runtime_dir

    conn = os.path.join(jupyter_runtime_dir(), f"kernel-{kid}.json")
    wait_for("the kernel's connection file", lambda: os.path.exists(conn))
    client = BlockingKernelClient(connection_file=conn)
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=80)
    client.stop_channels()
    t2 = time.monotonic()
    with open(READY, "w") as f:
        f.write(f"server {t1 - t0:.3f} s, kernel {t2 - t1:.3f} s\n")
    print(f"start-jupyter: server {t1 - t0:.3f} s, kernel {t2 - t1:.3f} s", flush=True)
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
