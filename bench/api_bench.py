"""API benchmarks against a running wrenn server, one JSON object per line.

Run with: bench/run.sh (starts its own server), or
    WRENN_BASE_URL=... WRENN_API_KEY=... python bench/api_bench.py [--n 50] [--template busybox]
"""

import argparse
import json
import os
import statistics
import time

import httpx


def line(name, samples, **extra):
    s = sorted(samples)
    p = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
    out = {"bench": name, "n": len(s), "p50_ms": round(p(0.5), 3), "p99_ms": round(p(0.99), 3),
           "mean_ms": round(statistics.fmean(s), 3)}
    out.update(extra)
    print(json.dumps(out), flush=True)


def wait_running(c, cid, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        st = c.get(f"/v1/capsules/{cid}").json()["status"]
        if st == "running":
            return
        if st in ("error", "stopped"):
            raise RuntimeError(f"capsule {cid} is {st}")
        time.sleep(0.002)
    raise TimeoutError(cid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--template", default="busybox")
    a = ap.parse_args()
    base = os.environ.get("WRENN_BASE_URL", "http://127.0.0.1:8080")
    key = os.environ["WRENN_API_KEY"]
    c = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60)
    true_cmd = {"cmd": "true", "args": [], "background": False}

    # create → first exec: the exec is sent right after the 202; the server holds it until
    # the capsule is running (contract §6), so this is what an SDK user waits for.
    samples, ids = [], []
    for _ in range(a.n):
        t0 = time.perf_counter()
        r = c.post("/v1/capsules", json={"template": a.template})
        r.raise_for_status()
        cid = r.json()["id"]
        e = c.post(f"/v1/capsules/{cid}/exec", json=true_cmd)
        e.raise_for_status()
        samples.append((time.perf_counter() - t0) * 1000)
        ids.append(cid)
    line("api.create_to_first_exec", samples, template=a.template)
    for cid in ids[1:]:
        c.delete(f"/v1/capsules/{cid}")
    cid = ids[0]
    wait_running(c, cid)

    samples = []
    for _ in range(a.n * 3):
        t0 = time.perf_counter()
        c.post(f"/v1/capsules/{cid}/exec", json=true_cmd).raise_for_status()
        samples.append((time.perf_counter() - t0) * 1000)
    line("api.exec_roundtrip", samples)

    blob = os.urandom(1024 * 1024)
    samples = []
    for i in range(a.n):
        t0 = time.perf_counter()
        c.post(f"/v1/capsules/{cid}/files/write", data={"path": "/tmp/bench.bin"},
               files={"file": ("upload", blob, "application/octet-stream")}).raise_for_status()
        samples.append((time.perf_counter() - t0) * 1000)
    line("api.file_write_1mib", samples)

    samples = []
    for _ in range(a.n):
        t0 = time.perf_counter()
        r = c.post(f"/v1/capsules/{cid}/files/read", json={"path": "/tmp/bench.bin"})
        r.raise_for_status()
        assert len(r.content) == len(blob)
        samples.append((time.perf_counter() - t0) * 1000)
    line("api.file_read_1mib", samples)

    c.delete(f"/v1/capsules/{cid}")


if __name__ == "__main__":
    main()
