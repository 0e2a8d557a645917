"""Starts Jupyter Server, then one `wrenn` kernel, and logs how long each took.

The capsule's readiness probe waits for /dev/shm/wrenn-jupyter-ready, which the kernel itself
writes as the last of its start-up lines (files/ipython_kernel_config.py), after it imported
numpy, pandas and matplotlib and with its sockets already bound: so a capsule is `running`
only once the SDK's first `GET /api/kernels` finds that kernel and its first cell is answered
at once. /dev/shm is a tmpfs of the capsule: a snapshot never carries the file over.

Only the standard library is imported here: this script runs on the start-up path, next to
Jupyter Server's and the kernel's own imports.
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
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


# Under the capsule's probe timeout (recipe.toml): one kernel's start took 40-90 s in an emulated
# (TCG) microVM guest on a loaded 2-core host.
def wait_for(what, fn, timeout=170.0, every=0.02):
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
        time.sleep(every)


def main():
    try:
        os.unlink(READY)
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    # `jupyter-server` itself: `jupyter server` would start one more Python to exec it.
    server = subprocess.Popen(["/opt/venv/bin/jupyter-server"])
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    wait_for("/api/status", lambda: call("GET", "/api/status"))
    t1 = time.monotonic()
    kernels = call("GET", "/api/kernels")
    if not any(k.get("name") == "wrenn" for k in kernels):
        call("POST", "/api/kernels", {"name": "wrenn"})
    wait_for("the kernel's start-up", lambda: os.path.exists(READY), every=0.01)
    t2 = time.monotonic()
    print(f"start-jupyter: server {t1 - t0:.3f} s, kernel {t2 - t1:.3f} s", flush=True)
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
