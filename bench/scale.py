"""Capsule storm and soak against a running wrenn server; prints JSON lines.

Run with: bench/scale.sh (starts its own server on a throwaway data dir), or
    WRENN_BASE_URL=... WRENN_API_KEY=... WRENN_DATA_DIR=... python bench/scale.py [--n 1000]
    [--soak 10000] [--memory-mb 64] [--template busybox] [--workers 64]

Storm: N creates at once (from --workers threads), a first exec in each as soon as its create
was accepted (the server holds it until the capsule runs; asked again while it is still
starting after the server's 20 s), then all destroyed. Soak: --soak
sequential create → exec → destroy cycles. Both end with the host-side leftovers, which must
all be 0. Only the local server is contacted.
"""

import argparse
import concurrent.futures as cf
import glob
import json
import os
import re
import statistics
import subprocess
import time

import httpx


def out(**kw):
    print(json.dumps(kw), flush=True)


def pct(samples, q):
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 1) if s else None


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def leftovers(data_dir, ids):
    """Host-side remains of the capsules `ids` of the server using `data_dir`."""
    ids = set(ids)
    with open("/proc/self/mountinfo") as f:
        mounts = [l.split()[4] for l in f]
    capsules = os.path.join(data_dir, "capsules")
    loops = 0
    for b in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(b) as f:
                if f.read().startswith(data_dir):
                    loops += 1
        except OSError:
            pass
    cgroups = [
        p for p in glob.glob("/sys/fs/cgroup/*/wrenn/cl-*") + glob.glob("/sys/fs/cgroup/wrenn/cl-*")
        if os.path.basename(p) in ids
    ]
    procs = 0
    for p in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(p, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"HOSTNAME=") and e[9:].decode(errors="replace") in ids for e in env):
            procs += 1
    netns = [n for n in os.listdir("/run/netns")] if os.path.isdir("/run/netns") else []
    claims = []
    for p in glob.glob("/run/wrenn-net/*"):
        try:
            with open(p) as f:
                owner, _, cid = f.read().strip().partition("\t")
            if owner == data_dir and cid in ids:
                claims.append(cid)
        except OSError:
            pass
    return {
        "mounts": sum(1 for m in mounts if m.startswith(capsules)),
        "netns": sum(1 for n in netns if n in ids),
        "loop_devices": loops,
        "cgroups": len(cgroups),
        "capsule_dirs": sum(1 for d in (os.listdir(capsules) if os.path.isdir(capsules) else [])
                            if d in ids),
        "agent_processes": procs,
        "network_slots": len(claims),
        "veths": max(0, host_veths() - VETHS_BEFORE[0]),
    }


VETHS_BEFORE = [0]


def host_veths():
    """Host-side capsule veths (`wrv<slot>`) of any server on this host."""
    links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True,
                           text=True).stdout
    return sum(1 for l in links.splitlines() if re.search(r"^\d+: wrv\d+[@:]", l))


def storm(c, a):
    create_body = {"template": a.template, "memory_mb": a.memory_mb, "timeout_sec": 0}
    exec_body = {"cmd": "/bin/sh", "args": ["-c", "echo ok"]}
    mem0 = mem_available_kib()
    t0 = time.monotonic()
    accepted_at, answered_at, first_exec_ms, errors, ids = [], [], [], [], []
    peak_load = [loadavg1()]

    def first_exec(cid, t):
        # The server holds an exec for a starting capsule up to 20 s, then answers 409; a
        # client waits longer (the SDK 30 s): ask again while the capsule is still starting.
        retries = 0
        while True:
            r = c.post(f"/v1/capsules/{cid}/exec", json=exec_body)
            # (`running` too: it may have started between the 409 and this look.)
            if r.status_code == 409 and c.get(f"/v1/capsules/{cid}").json().get("status") in (
                "starting", "running"):
                retries += 1
                continue
            break
        answered_at.append(time.monotonic() - t0)
        if r.status_code != 200 or r.json().get("stdout") != "ok\n":
            return ("exec", r.status_code, r.text[:200], cid, retries)
        first_exec_ms.append((time.monotonic() - t) * 1000)
        return None, None, None, cid, retries

    def create(_):
        t = time.monotonic()
        r = c.post("/v1/capsules", json=create_body)
        if r.status_code != 202:
            return ("create", r.status_code, r.text[:200], None, 0)
        accepted_at.append(time.monotonic() - t0)
        # The first exec goes out as soon as the create is accepted, from its own pool, so
        # that accepting the storm does not wait for capsules to start.
        return execs.submit(first_exec, r.json()["id"], t)

    stop = False

    def watch_load():
        while not stop:
            peak_load.append(loadavg1())
            time.sleep(1)

    retried = 0
    with cf.ThreadPoolExecutor(a.workers) as execs, cf.ThreadPoolExecutor(a.workers + 1) as ex:
        watcher = ex.submit(watch_load)
        results = list(ex.map(create, range(a.n)))
        for res in results:
            kind, code, text, cid, retries = res.result() if isinstance(res, cf.Future) else res
            retried += retries > 0
            if cid:
                ids.append(cid)
            if kind:
                errors.append({"step": kind, "status": code, "body": text})
        stop = True
        watcher.result()
    idle = len(ids)
    time.sleep(3)
    mem_idle = mem_available_kib()
    out(bench="scale.storm", n=a.n, running=len(first_exec_ms), errors=len(errors),
        all_accepted_s=round(max(accepted_at, default=0), 2),
        all_answered_s=round(max(answered_at, default=0), 2),
        first_exec_p50_ms=pct(first_exec_ms, 0.5), first_exec_p99_ms=pct(first_exec_ms, 0.99),
        peak_load1=max(peak_load), first_exec_waited_past_20s=retried,
        host_kib_per_idle_capsule=round((mem0 - mem_idle) / idle, 1) if idle else None)
    for e in errors[:5]:
        out(bench="scale.storm.error", **e)
    t1 = time.monotonic()
    with cf.ThreadPoolExecutor(a.workers) as ex:
        list(ex.map(lambda cid: c.delete(f"/v1/capsules/{cid}"), ids))
    wait_stopped(c, ids, 600)
    out(bench="scale.destroy", n=len(ids), all_destroyed_s=round(time.monotonic() - t1, 2))
    return ids


def wait_stopped(c, ids, deadline_s):
    end = time.monotonic() + deadline_s
    pending = set(ids)
    while pending and time.monotonic() < end:
        for cid in list(pending):
            if c.get(f"/v1/capsules/{cid}").json().get("status") in ("stopped", "error"):
                pending.discard(cid)
        if pending:
            time.sleep(0.5)
    return pending


def soak(c, a):
    ids, errors, cycle_ms = [], 0, []
    for _ in range(a.soak):
        t = time.monotonic()
        r = c.post("/v1/capsules", json={"template": a.template, "memory_mb": a.memory_mb})
        if r.status_code != 202:
            errors += 1
            continue
        cid = r.json()["id"]
        ids.append(cid)
        r = c.post(f"/v1/capsules/{cid}/exec", json={"cmd": "true"})
        errors += r.status_code != 200
        c.delete(f"/v1/capsules/{cid}")
        cycle_ms.append((time.monotonic() - t) * 1000)
    wait_stopped(c, ids, 600)
    out(bench="scale.soak", cycles=a.soak, errors=errors, cycle_p50_ms=pct(cycle_ms, 0.5),
        cycle_p99_ms=pct(cycle_ms, 0.99))
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--soak", type=int, default=0, help="cycles; 0 runs the storm instead")
    ap.add_argument("--memory-mb", type=int, default=64)
    ap.add_argument("--template", default="busybox")
    ap.add_argument("--workers", type=int, default=64)
    a = ap.parse_args()
    c = httpx.Client(base_url=os.environ.get("WRENN_BASE_URL", "http://127.0.0.1:8080"),
                     headers={"X-API-Key": os.environ["WRENN_API_KEY"]}, timeout=120,
                     limits=httpx.Limits(max_connections=a.workers + 8))
    VETHS_BEFORE[0] = host_veths()
    ids = soak(c, a) if a.soak else storm(c, a)
    # Housekeeping may still be retrying a teardown: give it a moment, then count.
    for _ in range(30):
        left = leftovers(os.environ["WRENN_DATA_DIR"], ids)
        if not any(left.values()):
            break
        time.sleep(2)
    out(bench="scale.leftovers", total=sum(left.values()), **left)
    # The server's own counters: failed teardowns, retried, still pending.
    m = {}
    for line in c.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("wrenn_teardown") and value:
            m[name] = int(float(value))
    out(bench="scale.metrics", **m)


if __name__ == "__main__":
    main()
