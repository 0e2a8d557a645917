"""API benchmarks against a running wrenn server, one JSON object per line.

Run with: bench/run.sh (starts its own server), or
    WRENN_BASE_URL=... WRENN_API_KEY=... python bench/api_bench.py [--n 50] [--template busybox]
    ... python bench/api_bench.py --code-runner [--n 10] [--refill-wait 8]

`--code-runner` runs only the code-runner benchmarks, with the official SDK's
`wrenn.code_runner.Capsule` against `code-runner-beta` (the server's warm pool on, the default;
`*.localhost` must resolve, see scripts/deps.sh): create → first `run_code` answered, warm (from
the pool, `--refill-wait` seconds between creates so it refills) and cold (a non-default memory
size, which the pool never serves), and a trivial cell's round trip on a warm kernel.
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
           "mean_ms": round(statistics.fmean(s), 3), "client": "python"}
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


def destroy_all(c, ids, deadline_s=60):
    """Destroys `ids` and waits until each is stopped, so nothing outlives the benchmark."""
    for cid in ids:
        c.delete(f"/v1/capsules/{cid}")
    end = time.monotonic() + deadline_s
    for cid in ids:
        while c.get(f"/v1/capsules/{cid}").json()["status"] != "stopped":
            if time.monotonic() > end:
                raise TimeoutError(f"{cid} not stopped")
            time.sleep(0.01)


def code_runner(base, key, n, refill_wait):
    """api.create_to_first_run_code (warm, cold) and api.run_code_roundtrip."""
    from wrenn.code_runner import Capsule

    # The SDK reaches Jupyter at http://8888-{id}.{host}:{port}: the host must be a name.
    sdk_base = base.replace("127.0.0.1", "localhost")

    def first_cell(**kw):
        t0 = time.perf_counter()
        cap = Capsule(base_url=sdk_base, api_key=key, **kw)
        try:
            r = cap.run_code("1 + 1", jupyter_timeout=120)
            assert r.error is None and r.text == "2", (r.error, r.text)
            ms = (time.perf_counter() - t0) * 1000
            warm = (cap.get_info().metadata or {}).get("warm_pool") == "true"
        finally:
            cap.destroy()
        return ms, warm

    # The first cold create may build the template into the data dir; not measured.
    first_cell(memory_mb=768)
    warm, pooled = [], 0
    for _ in range(n):
        time.sleep(refill_wait)
        ms, from_pool = first_cell()
        warm.append(ms)
        pooled += from_pool
    line("api.create_to_first_run_code", warm, mode="warm", from_pool=pooled)
    cold = [first_cell(memory_mb=768)[0] for _ in range(max(3, n // 2))]
    line("api.create_to_first_run_code", cold, mode="cold")

    time.sleep(refill_wait)
    cap = Capsule(base_url=sdk_base, api_key=key)
    try:
        cap.run_code("x = 1", jupyter_timeout=120)
        samples = []
        for _ in range(n * 10):
            t0 = time.perf_counter()
            r = cap.run_code("x")
            samples.append((time.perf_counter() - t0) * 1000)
            assert r.text == "1", (r.error, r.text)
        line("api.run_code_roundtrip", samples)
    finally:
        cap.destroy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--template", default="busybox")
    ap.add_argument("--code-runner", action="store_true", help="only the code-runner benchmarks")
    ap.add_argument("--refill-wait", type=float, default=8.0,
                    help="seconds between warm creates (the pool refills)")
    a = ap.parse_args()
    base = os.environ.get("WRENN_BASE_URL", "http://127.0.0.1:8080")
    key = os.environ["WRENN_API_KEY"]
    if a.code_runner:
        code_runner(base, key, a.n, a.refill_wait)
        return
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
    destroy_all(c, ids[1:])
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

    # PTY: a keystroke to `cat` on a terminal comes back as the line discipline's echo.
    from httpx_ws import connect_ws

    samples = []
    ws_url = f"/v1/capsules/{cid}/pty"
    with connect_ws(ws_url, c) as ws:
        ws.send_text(json.dumps({"type": "start", "cmd": "/bin/cat", "cols": 80, "rows": 24}))
        while json.loads(ws.receive_text()).get("type") != "started":
            pass
        for i in range(a.n * 3):
            ch = bytes([97 + i % 26])
            t0 = time.perf_counter()
            ws.send_bytes(ch)
            got = b""
            while ch not in got:
                m = ws.receive()
                if isinstance(getattr(m, "data", None), (bytes, bytearray)):
                    got += m.data
            samples.append((time.perf_counter() - t0) * 1000)
        ws.send_text(json.dumps({"type": "kill"}))
    line("api.pty_echo_roundtrip", samples)

    # Streamed transfer: 256 MiB up (chunked multipart) and down, per run.
    size = 256 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    boundary = "wrennbench0123456789abcdef012345"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n"
               f"/tmp/big.bin\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"upload.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(size // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    up, down = [], []
    runs = max(2, a.n // 10)
    for _ in range(runs):
        t0 = time.perf_counter()
        c.post(f"/v1/capsules/{cid}/files/stream/write", content=body(),
               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}).raise_for_status()
        up.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        got = 0
        with c.stream("POST", f"/v1/capsules/{cid}/files/stream/read", json={"path": "/tmp/big.bin"}) as r:
            r.raise_for_status()
            for b in r.iter_raw(1024 * 1024):
                got += len(b)
        assert got == size, got
        down.append((time.perf_counter() - t0) * 1000)
    mib = size / (1024 * 1024)
    line("api.stream_mib_per_s", up + down, size_mib=mib,
         upload_mib_per_s=round(mib / (statistics.median(up) / 1000), 1),
         download_mib_per_s=round(mib / (statistics.median(down) / 1000), 1))

    destroy_all(c, [cid])


if __name__ == "__main__":
    main()
